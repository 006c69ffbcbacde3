"""Numerical parity of omni_jax against the transformers classes it reimplements.

`compare(torch_module, *args, **kwargs)` converts the module's config and weights, runs both on the same
arguments and reports the difference; `compare_generate` compares greedy tokens, `compare_grads` the
training loss and gradients (omni_jax.parity.grads), `compare_features` the log-mel, and
`from_torch(module)` gives (config, params) of any supported module. Supported classes are listed in
`SUPPORTED`: the components' cases (omni_jax.parity.components) and each family's
(omni_jax.families.<family>.parity, through the registry). torch is imported only by the cases themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from omni_jax.parity.core import (
    LOGITS_ATOL,
    MODULE_ATOL,
    GenerateReport,
    ParityCase,
    ParityTable,
    Report,
    SpeechReport,
    exact_report,
    masked_rows,
    numpy_inputs,
    report,
    trim_to,
)
from omni_jax.parity.grads import GradReport, compare_grads
from omni_jax.parity.reference import whisper_features_reference

__all__ = [
    "LOGITS_ATOL", "MODULE_ATOL", "SUPPORTED", "GenerateReport", "GradReport", "ParityCase", "Report",
    "SpeechReport", "compare", "compare_features", "compare_grads", "compare_generate", "exact_report",
    "from_torch", "masked_rows", "numpy_inputs", "parity_case", "report", "trim_to",
    "whisper_features_reference",
]  # fmt: skip


def _table() -> ParityTable:
    """Every case: the components' and each registered family's, by transformers class name."""
    from omni_jax.families import registry
    from omni_jax.parity import components

    tables = [components.TABLE, *(f.parity for f in registry.FAMILIES)]
    merged = {
        f: {k: v for t in tables for k, v in getattr(t, f).items()}
        for f in ("cases", "generate", "from_torch", "speech")
    }
    return ParityTable(**merged)


def __getattr__(name: str):
    if name == "SUPPORTED":  # computed on use: the registry imports every family
        return tuple(sorted(_table().cases))
    raise AttributeError(f"module 'omni_jax.parity' has no attribute {name!r}")


def _lookup(table: dict, module: Any, what: str):
    name = type(module).__name__
    if name not in table:
        raise TypeError(f"parity.{what} does not support {name}; supported: {', '.join(sorted(table))}")
    return table[name]


def parity_case(torch_module: Any) -> ParityCase:
    """The case that compares a transformers module of a supported class."""
    return _lookup(_table().cases, torch_module, "compare")


def compare(torch_module: Any, *args: Any, atol: float | None = None, **kwargs: Any) -> Report:
    """Run `torch_module(*args, **kwargs)` and the omni_jax function it maps to; report the difference."""
    case = parity_case(torch_module)
    reference, ours = case.run(torch_module, *args, **kwargs)
    return report(type(torch_module).__name__, reference, ours, case.atol if atol is None else atol)


def compare_generate(
    hf_model: Any, input_ids: Any, attention_mask: Any, max_new_tokens: int, **inputs: Any
) -> GenerateReport | SpeechReport:
    """Greedy `hf_model.generate` (its generation config's EOS and pad ids) against omni_jax's on-device loop;
    `inputs` are further model inputs (audio features of multimodal models). With `return_audio=True` (a
    speaking model: Qwen3OmniMoeForConditionalGeneration) the whole speech chain with greedy thinker and
    talker, `speaker=` and transformers' stage-prefixed settings (talker_max_new_tokens, ...): a SpeechReport
    of tokens, codes and waveform."""
    if inputs.pop("return_audio", False):
        case = _lookup(_table().speech, hf_model, "compare_generate(..., return_audio=True)")
        return case(hf_model, input_ids, attention_mask, max_new_tokens, **inputs)
    case = _lookup(_table().generate, hf_model, "compare_generate")
    reference, ours = case(hf_model, input_ids, attention_mask, max_new_tokens, **inputs)
    return GenerateReport(type(hf_model).__name__, np.asarray(reference), np.asarray(ours))


def from_torch(torch_module: Any, **overrides: Any) -> tuple[Any, dict]:
    """(config, params) of a live transformers module of a supported class (its in-memory weights)."""
    return _lookup(_table().from_torch, torch_module, "from_torch")(torch_module, **overrides)


def compare_features(waveforms, *, path: str = "numpy", **options: Any) -> Report:
    """omni_jax.audio.log_mel against WhisperFeatureExtractor; a mask mismatch fails as a shape mismatch.
    `options` (num_mel_bins, padding, max_samples) go to both, as `whisper_features_reference`'s keywords."""
    from omni_jax.audio import log_mel

    ref, ref_mask = whisper_features_reference(waveforms, path=path, **options)
    ours, mask = log_mel(waveforms, **options)
    if not np.array_equal(np.asarray(mask), ref_mask):
        return Report(f"log_mel mask ({path})", float("inf"), float("inf"), ref_mask.shape, (-1,), 2e-5)
    return report(f"log_mel vs WhisperFeatureExtractor ({path} path)", ref, np.asarray(ours), 2e-5)
