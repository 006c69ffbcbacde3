"""`make demo`: the main job of the current stage on an embedded default.

Loads the shipped speech clip, computes its Whisper log-mel in JAX, writes a PNG of it, and prints parity
against transformers' WhisperFeatureExtractor.
"""

from __future__ import annotations

import argparse
import importlib.resources
import time
from pathlib import Path

import numpy as np

from omni_jax.audio import load_audio, log_mel
from omni_jax.audio.picture import save_spectrogram_png


def shipped_speech() -> Path:
    """The bundled espeak-ng clip: 'please call stella and ask her to bring these things with her from the store'."""
    return Path(str(importlib.resources.files("omni_jax") / "assets" / "speech.wav"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=None, help="audio file (default: the shipped speech clip)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    parser.add_argument("--mel-bins", type=int, default=128)
    args = parser.parse_args(argv)

    path = args.audio or shipped_speech()
    clip = load_audio(path)
    start = time.perf_counter()
    features, mask = log_mel([clip], num_mel_bins=args.mel_bins, padding="longest")
    features = np.asarray(features)
    elapsed = time.perf_counter() - start
    png = save_spectrogram_png(args.out / f"{path.stem}_logmel.png", features[0])
    print(f"audio: {path} ({len(clip) / 16000:.2f} s)")
    print(f"log-mel: {features.shape} in {elapsed * 1e3:.0f} ms (incl. compile), valid frames {int(mask.sum())}")
    print(f"picture: {png}")
    try:
        from omni_jax.parity import compare_features
    except ImportError:  # pragma: no cover - the torch extra is not installed
        print("parity: skipped (install the 'torch' extra for transformers)")
        return 0
    ok = True
    for padding in ("longest", "max_length"):
        report = compare_features([clip], num_mel_bins=args.mel_bins, padding=padding)
        ok &= report.ok
        print(f"parity [{padding}]: {report}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
