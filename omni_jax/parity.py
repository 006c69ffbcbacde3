"""Numerical parity of omni_jax against the transformers classes it reimplements.

`compare(torch_module, *args, **kwargs)` converts the module's config and weights, runs both on the same
arguments and reports the difference. Supported classes are listed in `SUPPORTED`; each model module
defines `PARITY = {class_name: ParityCase}`. torch is imported only by the cases themselves.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

MODULE_ATOL = 1e-4
LOGITS_ATOL = 1e-3

# class name -> module defining PARITY[class name]
SUPPORTED: dict[str, str] = {
    "WhisperEncoder": "omni_jax.models.whisper_encoder",
    "Qwen2AudioEncoder": "omni_jax.models.whisper_encoder",
    "AudioFlamingo3Encoder": "omni_jax.models.whisper_encoder",
    "Qwen3OmniMoeAudioEncoder": "omni_jax.models.aut_encoder",
    "Qwen2ForCausalLM": "omni_jax.models.decoder",
    "Qwen3ForCausalLM": "omni_jax.models.decoder",
    "Qwen3MoeForCausalLM": "omni_jax.models.decoder",
    "Qwen3OmniMoeThinkerTextModel": "omni_jax.models.decoder",
    "Qwen3OmniMoeCode2Wav": "omni_jax.models.code2wav",
    "AudioFlamingo3ForConditionalGeneration": "omni_jax.models.audioflamingo3",
    "Qwen3OmniMoeThinkerForConditionalGeneration": "omni_jax.models.qwen3_omni_thinker",
}


@dataclasses.dataclass(frozen=True)
class ParityCase:
    """How to run one transformers class and its JAX counterpart on the same arguments.

    run(torch_module, *args, **kwargs) -> (reference, ours), both numpy arrays of one shape."""

    run: Callable[..., tuple[np.ndarray, np.ndarray]]
    atol: float = MODULE_ATOL


@dataclasses.dataclass(frozen=True)
class Report:
    name: str
    max_abs_diff: float
    max_rel_diff: float
    reference_shape: tuple[int, ...]
    shape: tuple[int, ...]
    atol: float

    @property
    def ok(self) -> bool:
        return self.reference_shape == self.shape and self.max_abs_diff <= self.atol

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        return (
            f"{self.name}: max_abs={self.max_abs_diff:.3g} max_rel={self.max_rel_diff:.3g} "
            f"shape={self.shape} (reference {self.reference_shape}) atol={self.atol:g} {verdict}"
        )


def parity_case(torch_module: Any) -> ParityCase:
    name = type(torch_module).__name__
    if name not in SUPPORTED:
        raise TypeError(f"parity.compare does not support {name}; supported: {', '.join(sorted(SUPPORTED))}")
    module = importlib.import_module(SUPPORTED[name])
    return module.PARITY[name]


def numpy_inputs(inputs: dict) -> dict[str, np.ndarray]:
    """Model inputs given as CPU torch tensors (or numpy arrays) -> numpy; None entries dropped."""
    return {
        k: v if isinstance(v, np.ndarray) else v.detach().cpu().numpy()
        for k, v in inputs.items()
        if v is not None
    }


def report(name: str, reference: np.ndarray, ours: np.ndarray, atol: float) -> Report:
    reference = np.asarray(reference, np.float64)
    ours = np.asarray(ours, np.float64)
    if reference.shape != ours.shape:
        return Report(name, float("inf"), float("inf"), reference.shape, ours.shape, atol)
    diff = np.abs(reference - ours)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(reference), 1e-6)).max()) if diff.size else 0.0
    return Report(name, max_abs, max_rel, reference.shape, ours.shape, atol)


def compare(torch_module: Any, *args: Any, atol: float | None = None, **kwargs: Any) -> Report:
    """Run `torch_module(*args, **kwargs)` and the omni_jax function it maps to; report the difference."""
    case = parity_case(torch_module)
    reference, ours = case.run(torch_module, *args, **kwargs)
    return report(type(torch_module).__name__, reference, ours, case.atol if atol is None else atol)


def whisper_features_reference(
    waveforms,
    *,
    num_mel_bins: int = 80,
    padding: str = "max_length",
    max_samples: int = 480000,
    path: str = "numpy",
) -> tuple[np.ndarray, np.ndarray]:
    """transformers' WhisperFeatureExtractor on its numpy path (path="numpy") or its torch path ("torch")."""
    import transformers.models.whisper.feature_extraction_whisper as fx

    if path not in ("numpy", "torch"):
        raise ValueError(f"path must be 'numpy' or 'torch', got {path!r}")
    extractor = fx.WhisperFeatureExtractor(feature_size=num_mel_bins)
    clips = [np.asarray(w, np.float32) for w in waveforms]
    original = fx.is_torch_available
    fx.is_torch_available = (lambda: False) if path == "numpy" else original
    try:
        out = extractor(
            clips,
            sampling_rate=16000,
            padding=padding,
            max_length=max_samples,
            return_attention_mask=True,
            return_tensors="np",
        )
    finally:
        fx.is_torch_available = original
    return out["input_features"], out["attention_mask"]


def compare_features(waveforms, *, path: str = "numpy", **options: Any) -> Report:
    """omni_jax.audio.log_mel against WhisperFeatureExtractor; a mask mismatch fails as a shape mismatch.
    `options` (num_mel_bins, padding, max_samples) go to both, as `whisper_features_reference`'s keywords."""
    from omni_jax.audio import log_mel

    ref, ref_mask = whisper_features_reference(waveforms, path=path, **options)
    ours, mask = log_mel(waveforms, **options)
    if not np.array_equal(np.asarray(mask), ref_mask):
        return Report(f"log_mel mask ({path})", float("inf"), float("inf"), ref_mask.shape, (-1,), 2e-5)
    return report(f"log_mel vs WhisperFeatureExtractor ({path} path)", ref, np.asarray(ours), 2e-5)


@dataclasses.dataclass(frozen=True)
class GenerateReport:
    """Greedy tokens of transformers' `generate` against ours, both b n (new tokens only)."""

    name: str
    reference: np.ndarray
    ours: np.ndarray

    @property
    def first_divergence(self) -> tuple[int, int] | None:
        """(row, step) of the earliest differing token, None when identical."""
        if self.reference.shape != self.ours.shape:
            return (0, min(self.reference.shape[1], self.ours.shape[1]))
        rows, steps = np.nonzero(self.reference != self.ours)
        if not len(steps):
            return None
        i = int(np.argmin(steps))
        return int(rows[i]), int(steps[i])

    @property
    def ok(self) -> bool:
        return self.first_divergence is None

    def __str__(self) -> str:
        where = self.first_divergence
        verdict = (
            "identical" if where is None else f"FAIL: first divergence at row {where[0]}, step {where[1]}"
        )
        return (
            f"{self.name}: {self.reference.shape[1]} new tokens x {self.reference.shape[0]} rows, {verdict}"
        )


def compare_generate(
    hf_model: Any, input_ids: Any, attention_mask: Any, max_new_tokens: int, **inputs: Any
) -> GenerateReport:
    """Greedy `hf_model.generate` (its generation config's EOS and pad ids) against omni_jax's on-device loop;
    `inputs` are further model inputs (audio features of multimodal models)."""
    name = type(hf_model).__name__
    if name not in SUPPORTED:
        raise TypeError(
            f"parity.compare_generate does not support {name}; supported: {', '.join(sorted(SUPPORTED))}"
        )
    module = importlib.import_module(SUPPORTED[name])
    if name not in getattr(module, "GENERATE", {}):
        raise TypeError(f"{name} has no generation parity case in {SUPPORTED[name]}")
    reference, ours = module.GENERATE[name](hf_model, input_ids, attention_mask, max_new_tokens, **inputs)
    return GenerateReport(name, np.asarray(reference), np.asarray(ours))


if __name__ == "__main__":
    from omni_jax.parity_cli import main

    raise SystemExit(main())
