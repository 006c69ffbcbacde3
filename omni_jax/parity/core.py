"""The parity core: tolerances, reports and the numpy helpers every comparison uses. Imports no model and
no torch, so any module may import it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

MODULE_ATOL = 1e-4
LOGITS_ATOL = 1e-3


@dataclasses.dataclass(frozen=True)
class ParityCase:
    """How to run one transformers class and its JAX counterpart on the same arguments.

    run(torch_module, *args, **kwargs) -> (reference, ours), both numpy arrays of one shape."""

    run: Callable[..., tuple[np.ndarray, np.ndarray]]
    atol: float = MODULE_ATOL


@dataclasses.dataclass(frozen=True)
class ParityTable:
    """What one family (or the components) can compare, by transformers class name."""

    cases: dict[str, ParityCase]  # compare(module, ...)
    generate: dict[str, Callable] = dataclasses.field(default_factory=dict)  # compare_generate(module, ...)
    from_torch: dict[str, Callable] = dataclasses.field(default_factory=dict)  # module -> (config, params)
    speech: dict[str, Callable] = dataclasses.field(
        default_factory=dict
    )  # compare_generate(..., return_audio)
    stages: Callable[..., list] | None = None  # (hf_dir, audios, prompts, *, max_new_tokens) -> [Report]
    visual: bool = False  # stages also take images=, videos=, fps=, use_audio_in_video=


@dataclasses.dataclass(frozen=True)
class Report:
    name: str
    max_abs_diff: float
    max_rel_diff: float
    reference_shape: tuple[int, ...]
    shape: tuple[int, ...]
    atol: float
    compared: bool = True  # False: a stage this environment cannot compare (its name says why)

    @property
    def ok(self) -> bool:
        return not self.compared or (self.reference_shape == self.shape and self.max_abs_diff <= self.atol)

    @property
    def verdict(self) -> str:
        return "not compared" if not self.compared else "ok" if self.ok else "FAIL"

    def __str__(self) -> str:
        verdict = self.verdict
        return (
            f"{self.name}: max_abs={self.max_abs_diff:.3g} max_rel={self.max_rel_diff:.3g} "
            f"shape={self.shape} (reference {self.reference_shape}) atol={self.atol:g} {verdict}"
        )


def report(name: str, reference: np.ndarray, ours: np.ndarray, atol: float) -> Report:
    reference = np.asarray(reference, np.float64)
    ours = np.asarray(ours, np.float64)
    if reference.shape != ours.shape:
        return Report(name, float("inf"), float("inf"), reference.shape, ours.shape, atol)
    diff = np.abs(reference - ours)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(reference), 1e-6)).max()) if diff.size else 0.0
    return Report(name, max_abs, max_rel, reference.shape, ours.shape, atol)


def exact_report(name: str, same: bool, shape) -> Report:
    """A report for values that must be equal (ids, masks, greedy tokens): difference 0 or inf."""
    diff = 0.0 if same else float("inf")
    return Report(name, diff, diff, tuple(shape), tuple(shape), 0.0)


def skipped_report(name: str, shape) -> Report:
    """A stage that cannot be compared here (no reference implementation runs); not a failure."""
    return Report(name, float("nan"), float("nan"), tuple(shape), tuple(shape), 0.0, compared=False)


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


SNR_DB = 80.0  # waveforms of speech generation


@dataclasses.dataclass(frozen=True)
class SpeechReport:
    """transformers' speech `generate` against ours: text tokens (b n), codec frames (b G n) and waveforms
    (one per row)."""

    name: str
    tokens_equal: bool
    codes_equal: bool
    waveform_max_abs_diff: float
    waveform_snr_db: float
    min_snr_db: float = SNR_DB

    @property
    def ok(self) -> bool:
        return self.tokens_equal and self.codes_equal and self.waveform_snr_db >= self.min_snr_db

    def __str__(self) -> str:
        same = {True: "identical", False: "DIFFERENT"}
        return (
            f"{self.name}: tokens {same[self.tokens_equal]}, codes {same[self.codes_equal]}, waveform "
            f"max_abs={self.waveform_max_abs_diff:.3g} SNR={self.waveform_snr_db:.1f} dB "
            f"(>= {self.min_snr_db:g}) {'ok' if self.ok else 'FAIL'}"
        )


def speech_report(name: str, tokens: tuple, codes: tuple, waves: tuple) -> SpeechReport:
    """A SpeechReport of (reference, ours) pairs: token arrays, code arrays, lists of per-row waveforms."""
    same = [np.shape(a) == np.shape(b) and np.array_equal(a, b) for a, b in (tokens, codes)]
    ref, ours = waves
    if [np.shape(w) for w in ref] != [np.shape(w) for w in ours]:
        return SpeechReport(name, *same, float("inf"), float("-inf"))
    ref = np.concatenate([np.ravel(w) for w in ref]).astype(np.float64)
    err = ref - np.concatenate([np.ravel(w) for w in ours]).astype(np.float64)
    noise = float((err**2).sum())
    snr = float("inf") if noise == 0 else 10 * np.log10(float((ref**2).sum()) / noise)
    return SpeechReport(name, *same, float(np.abs(err).max()) if err.size else 0.0, snr)


def numpy_inputs(inputs: dict) -> dict[str, np.ndarray]:
    """Model inputs given as CPU torch tensors (or numpy arrays) -> numpy; None entries dropped, flags (e.g.
    use_audio_in_video) kept as they are."""
    return {
        k: v.detach().cpu().numpy() if hasattr(v, "detach") else v for k, v in inputs.items() if v is not None
    }


def masked_rows(reference: np.ndarray, ours: np.ndarray, attention_mask) -> tuple[np.ndarray, np.ndarray]:
    """Zero the outputs of left-padding positions (unused garbage in both implementations); the mask may be a
    numpy array or a CPU torch tensor."""
    if attention_mask is None:
        return reference, ours
    keep = np.asarray(attention_mask).astype(bool)[..., None]
    return np.where(keep, reference, 0), np.where(keep, ours, 0)


def trim_to(reference: np.ndarray, ours: np.ndarray, pad: int) -> np.ndarray:
    """Drop our all-pad columns past the reference's length (transformers stops once every row has ended)."""
    ours = np.asarray(ours)
    return ours[:, : reference.shape[1]] if (ours[:, reference.shape[1] :] == pad).all() else ours
