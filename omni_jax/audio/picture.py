"""A log-mel spectrogram as a PNG picture, written with zlib alone (no plotting dependency)."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

# Anchor colours of a perceptually ordered dark-blue -> yellow map, interpolated linearly.
_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


def colorize(values: np.ndarray) -> np.ndarray:
    """h w floats -> h w 3 uint8, min..max mapped onto the colour map."""
    v = np.asarray(values, np.float64)
    lo, hi = float(v.min()), float(v.max())
    t = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    pos = t * (len(_ANCHORS) - 1)
    i = np.clip(pos.astype(int), 0, len(_ANCHORS) - 2)
    frac = (pos - i)[..., None]
    return np.round(_ANCHORS[i] * (1 - frac) + _ANCHORS[i + 1] * frac).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an h w 3 uint8 image atomically."""
    rgb = np.ascontiguousarray(rgb, np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_png expects an h w 3 image, got {rgb.shape}")
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(png)
    os.replace(tmp, path)
    return path


def save_spectrogram_png(path: str | os.PathLike, features: np.ndarray, scale: int = 2) -> Path:
    """mels frames features -> PNG with low frequencies at the bottom, each bin `scale` pixels tall."""
    image = colorize(np.asarray(features)[::-1])
    return write_png(path, np.repeat(image, scale, axis=0))
