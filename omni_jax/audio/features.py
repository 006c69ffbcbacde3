"""Whisper log-mel features in jax.numpy, equal to transformers' WhisperFeatureExtractor.

Periodic Hann window, centred STFT with reflect padding (n_fft 400, hop 160), power spectrum, Slaney mel
filters, log10 clamped at 1e-10, floor at (max - 8) per example over all its frames (padding included),
(x + 4) / 4, last STFT frame dropped.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax import validation
from omni_jax.audio.io import to_float32

SAMPLING_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
MAX_SAMPLES = 480000  # 30 s
PADDINGS = ("max_length", "longest")


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(f >= 1000.0, log_part, 3.0 * f / 200.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) * (m - 15.0) / 27.0), 200.0 * m / 3.0)


@functools.cache
def mel_filters(num_mel_bins: int, n_fft: int = N_FFT, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Slaney-normalised triangular filters over 0 .. sampling_rate/2, float64. -> (n_fft//2 + 1, mels)."""
    fft_freqs = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), num_mel_bins + 2))
    widths = np.diff(edges)  # mels + 1
    slopes = edges[None, :] - fft_freqs[:, None]  # f (mels + 2)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))


@functools.cache
def _hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window, float32."""
    return np.hanning(n_fft + 1)[:-1].astype(np.float32)


CHUNK_FRAMES = 500  # frames per STFT chunk on CPU: the chunk's float64 frames and spectrum stay in cache


def _chunk_log_mel(segment: jax.Array, filters: jax.Array, frames: int, dtype) -> jax.Array:
    """Unfloored log10 mel of the STFT frames of one padded segment.
    segment: (frames - 1) * 160 + 400 -> mels frames."""
    index = jnp.arange(frames)[:, None] * HOP_LENGTH + jnp.arange(N_FFT)[None, :]
    spectrum = jnp.fft.rfft(segment.astype(dtype)[index] * jnp.asarray(_hann(N_FFT), dtype), axis=-1)
    power = (jnp.square(spectrum.real) + jnp.square(spectrum.imag)).astype(jnp.float32)  # frames freq
    mel = jnp.dot(filters.T, power.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.log10(jnp.maximum(mel, 1e-10))


def _unfloored_log_mel(waveforms: jax.Array, filters: jax.Array, dtype, chunk: int | None) -> jax.Array:
    """Centred, reflect-padded STFT -> log10 mel, last frame dropped, in chunks of `chunk` frames (None: one
    chunk per row, vectorised). b l -> b mels (l // 160)."""
    batch, n_frames = waveforms.shape[0], waveforms.shape[1] // HOP_LENGTH
    vectorise = chunk is None
    chunk = n_frames if vectorise else min(chunk, n_frames)
    per_row = -(-n_frames // chunk)
    span = (chunk - 1) * HOP_LENGTH + N_FFT
    padded = jnp.pad(waveforms, ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect")

    def one(index):  # chunk `index` of all rows' -> (row, its first frame, mels chunk)
        row = index // per_row
        # a partial last chunk is shifted back to end at the last frame, overlapping its neighbour
        first = jnp.minimum((index % per_row) * chunk, n_frames - chunk)
        segment = jax.lax.dynamic_slice(padded, (row, first * HOP_LENGTH), (1, span))[0]
        return row, first, _chunk_log_mel(segment, filters, chunk, dtype)

    if vectorise:
        return jax.vmap(lambda row: one(row)[2])(jnp.arange(batch))
    total = batch * per_row

    def two(i, out):  # two chunks per step (an odd count repeats the last): XLA:CPU's FFT is single-threaded,
        # two independent ones run side by side
        for index in (2 * i, jnp.minimum(2 * i + 1, total - 1)):
            row, first, block = one(index)
            out = jax.lax.dynamic_update_slice(out, block[None], (row, 0, first))
        return out

    empty = jnp.zeros((batch, filters.shape[1], n_frames), jnp.float32)
    return jax.lax.fori_loop(0, -(-total // 2), two, empty)


def _stft_in_float64(float64_stft: bool | None) -> bool:
    return jax.default_backend() == "cpu" if float64_stft is None else float64_stft


@functools.partial(jax.jit, static_argnames=("num_mel_bins", "float64_stft"))
def log_mel_spectrogram(
    waveforms: jax.Array, num_mel_bins: int = 80, float64_stft: bool | None = None
) -> jax.Array:
    """Log-mel of already padded waveforms. waveforms: b l float32 -> b mels (l // 160).

    The STFT runs in float64 (as transformers' numpy path) when `float64_stft`, by default on CPU only: in
    float32 the FFT's rounding, relative to the frame's energy, reaches ~5e-5 in quiet bins of speech. On CPU
    the frames go through in chunks of CHUNK_FRAMES (cache-sized buffers); elsewhere all at once."""
    filters = jnp.asarray(mel_filters(num_mel_bins).astype(np.float32))
    chunk = CHUNK_FRAMES if jax.default_backend() == "cpu" else None
    if _stft_in_float64(float64_stft):
        with jax.enable_x64(True):
            log_spec = _unfloored_log_mel(waveforms, filters, jnp.float64, chunk)
    else:
        log_spec = _unfloored_log_mel(waveforms, filters, jnp.float32, chunk)
    log_spec = jnp.maximum(log_spec, log_spec.max(axis=(1, 2), keepdims=True) - 8.0)
    return (log_spec + 4.0) / 4.0


def _validate(
    waveforms, num_mel_bins: int, padding: str, max_samples: int, sampling_rate: int
) -> list[np.ndarray]:
    if sampling_rate != SAMPLING_RATE:
        raise ValueError(
            f"log_mel needs {SAMPLING_RATE} Hz audio, got sampling_rate={sampling_rate}: resample first with "
            f"omni_jax.audio.io.resample(samples, {sampling_rate}, {SAMPLING_RATE}), or read the file with "
            f"omni_jax.audio.load_audio(path), which resamples to {SAMPLING_RATE} Hz"
        )
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if not isinstance(num_mel_bins, int | np.integer) or not 1 <= num_mel_bins <= N_FFT // 2 + 1:
        raise ValueError(f"num_mel_bins must be an integer in [1, {N_FFT // 2 + 1}], got {num_mel_bins!r}")
    if padding == "max_length" and max_samples < HOP_LENGTH:
        raise ValueError(f"max_samples must be at least one hop ({HOP_LENGTH}), got {max_samples}")
    if isinstance(waveforms, str | os.PathLike) or (
        isinstance(waveforms, Sequence) and any(isinstance(w, str | os.PathLike) for w in waveforms)
    ):
        raise TypeError("log_mel takes waveforms (arrays), not file paths: read them with load_audio(path)")
    if isinstance(waveforms, np.ndarray | jax.Array):
        if waveforms.ndim != 1:
            raise ValueError(
                f"log_mel takes a list of 1-D waveforms, got one array of shape {waveforms.shape}; "
                "pass list(batch) for a batch, and mix multichannel audio to mono first"
            )
        waveforms = [waveforms]
    if not isinstance(waveforms, Sequence) or len(waveforms) == 0:
        raise ValueError("log_mel takes a non-empty list of 1-D waveforms")
    clips = []
    for i, w in enumerate(waveforms):
        w = np.asarray(w)
        if w.ndim != 1:
            raise ValueError(
                f"waveform {i} has shape {w.shape}; expected 1-D mono samples (mix to mono first)"
            )
        if w.size == 0:
            raise ValueError(f"waveform {i} is empty")
        if not np.issubdtype(w.dtype, np.number) or np.iscomplexobj(w):
            raise ValueError(f"waveform {i} has dtype {w.dtype}; expected real samples")
        w = validation.finite_array(f"waveform {i}", to_float32(w))  # integer PCM is scaled to [-1, 1)
        clips.append(w)
    return clips


def pad_waveforms(
    clips: list[np.ndarray], padding: str = "max_length", max_samples: int = MAX_SAMPLES
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad with zeros to max_samples (truncating longer clips) or to the longest clip.
    -> (b l float32, frame mask b (l // 160) int32) with the mask transformers returns."""
    length = max_samples if padding == "max_length" else max(len(c) for c in clips)
    batch = np.zeros((len(clips), length), np.float32)
    kept = np.array([min(len(c), length) for c in clips])
    for row, (clip, n) in enumerate(zip(clips, kept, strict=True)):
        batch[row, :n] = clip[:n]
    frames = length // HOP_LENGTH
    if frames == 0:
        raise ValueError(
            f"padded length {length} samples is shorter than one hop ({HOP_LENGTH}): no frame to compute "
            "(pad to the 30-s window with padding='max_length')"
        )
    mask = (np.arange(frames)[None, :] * HOP_LENGTH < kept[:, None]).astype(np.int32)
    return batch, mask


def log_mel(
    waveforms,
    *,
    num_mel_bins: int = 80,
    padding: str = "max_length",
    max_samples: int = MAX_SAMPLES,
    sampling_rate: int = SAMPLING_RATE,
) -> tuple[jax.Array, jax.Array]:
    """Whisper log-mel of a list of 1-D 16-kHz waveforms. -> (features b mels f float32, mask b f int32)."""
    clips = _validate(waveforms, num_mel_bins, padding, max_samples, sampling_rate)
    batch, mask = pad_waveforms(clips, padding, max_samples)
    return log_mel_spectrogram(jnp.asarray(batch), num_mel_bins=int(num_mel_bins)), jnp.asarray(mask)


def check_mel_bins(features, expected: int) -> None:
    """Raise if features (b mels f) do not have the mel count a model expects."""
    if np.ndim(features) != 3 or np.shape(features)[1] != expected:
        raise ValueError(
            f"features of shape {tuple(np.shape(features))} do not have {expected} mel bins "
            f"(expected b {expected} frames); compute them with log_mel(..., num_mel_bins={expected})"
        )
