"""Audio files in and out: soundfile for I/O, soxr for resampling, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from omni_jax import validation


def to_float32(samples: np.ndarray) -> np.ndarray:
    """Integer PCM (int16/int32/uint8) scaled to [-1, 1); floats cast to float32; anything else (bool,
    complex, strings) refused."""
    samples = np.asarray(samples)
    if samples.dtype.kind not in "uif" and samples.dtype.name != "bfloat16":
        raise TypeError(f"audio samples must be float or integer PCM, got dtype {samples.dtype}")
    if samples.dtype == np.uint8:
        return (samples.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(samples.dtype, np.integer):
        return (samples.astype(np.float64) / float(2 ** (8 * samples.dtype.itemsize - 1))).astype(np.float32)
    return samples.astype(np.float32)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """frames x channels -> frames, by averaging channels."""
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return samples
    return soxr.resample(samples, orig_sr, target_sr, quality="VHQ").astype(np.float32)


def load_audio(path: str | os.PathLike, sampling_rate: int = 16000) -> np.ndarray:
    """Read wav/flac/ogg, mix to mono, resample to `sampling_rate`. -> float32 (samples,)."""
    path = validation.path("audio file", path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError
        raise ValueError(f"cannot read audio file {path}: {e}") from None
    dtype = (
        "int32"
        if info.subtype in ("PCM_24", "PCM_32")
        else ("int16" if info.subtype == "PCM_16" else "float32")
    )
    data, sr = sf.read(str(path), dtype=dtype, always_2d=False)
    if data.size == 0:
        raise ValueError(f"audio file {path} contains no samples")
    validation.finite_array(f"audio file {path}", data)
    return resample(to_mono(to_float32(data)), sr, sampling_rate)


def save_audio(path: str | os.PathLike, samples, sampling_rate: int) -> Path:
    """Write mono float samples (clipped to [-1, 1]) atomically; format from the suffix (.wav/.flac/.ogg)."""
    with AudioWriter(path, sampling_rate) as writer:
        writer.write(samples)
    return writer.path


class AudioWriter:
    """A mono audio file written piece by piece (streamed speech) to a temporary file in the same folder,
    renamed to `path` when the `with` block ends without error; format from the suffix (.wav/.flac/.ogg)."""

    def __init__(self, path: str | os.PathLike, sampling_rate: int):
        self.path = Path(path)
        self.format = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(self.path.suffix.lower())
        if self.format is None:
            raise ValueError(f"unsupported audio suffix {self.path.suffix!r}; use .wav, .flac or .ogg")
        self.sampling_rate, self.samples = sampling_rate, 0

    def __enter__(self) -> AudioWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.parent / f".{self.path.name}.partial-{os.getpid()}"  # umask permissions
        self.file = sf.SoundFile(self.tmp, "w", self.sampling_rate, 1, format=self.format)
        return self

    def write(self, samples) -> None:
        """Append mono float samples (clipped to [-1, 1])."""
        samples = np.asarray(samples, np.float32)
        if samples.ndim != 1:
            raise ValueError(f"save_audio expects 1-D mono samples, got shape {samples.shape}")
        if not np.all(np.isfinite(samples)):
            raise ValueError("save_audio: samples contain NaN or inf")
        self.file.write(np.clip(samples, -1.0, 1.0))
        self.samples += len(samples)

    def __exit__(self, kind, error, trace) -> None:
        self.file.close()
        try:
            if kind is None:
                os.replace(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
