"""`make demo`: AudioFlamingo3 end to end on the shipped speech clip, with a tiny random checkpoint.

1. the clip's Whisper log-mel as a PNG;
2. once (cached under .cache/): a tiny random AF3 HF checkpoint folder (configs/tiny-audioflamingo3.json) with
   the offline tiny tokenizer;
3. `python -m omni_jax.convert to-jax` on it;
4. `python -m omni_jax.generate` on the converted folder (random weights: the text is gibberish);
5. `python -m omni_jax.parity` against transformers on the HF folder.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from omni_jax.audio import load_audio, log_mel
from omni_jax.audio.picture import save_spectrogram_png
from omni_jax.cli import common
from omni_jax.testing.checkpoints import TINY_CONFIG, cached_tiny_checkpoint, read_af3_config, shipped_speech


def spectrogram(path: Path, out: Path, mel_bins: int) -> None:
    clip = load_audio(path)
    start = time.perf_counter()
    features, mask = log_mel([clip], num_mel_bins=mel_bins, padding="longest")
    features = np.asarray(features)
    elapsed = time.perf_counter() - start
    png = save_spectrogram_png(out / f"{path.stem}_logmel.png", features[0])
    print(f"audio: {path} ({len(clip) / 16000:.2f} s)")
    print(
        f"log-mel: {features.shape} in {elapsed * 1e3:.0f} ms (incl. compile), valid frames {int(mask.sum())}"
    )
    print(f"picture: {png}")


def step(title: str, *args: str) -> int:
    """Run `python -m ...args`, showing the command; -> its exit status."""
    command = [sys.executable, "-m", *args]
    print(f"\n== {title}\n$ python -m {' '.join(args)}", flush=True)
    return subprocess.run(command, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--audio", type=Path, default=None, help="audio file (default: the shipped speech clip)"
    )
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    parser.add_argument("--config", type=Path, default=TINY_CONFIG, help="HF config of the tiny model")
    parser.add_argument("--max-new-tokens", default="24")
    args = parser.parse_args(argv)

    try:
        read_af3_config(args.config)  # refuse another model's config before any work
    except ValueError as e:
        return common.fail(e, common.USAGE)
    audio = args.audio or shipped_speech()
    spectrogram(audio, args.out, mel_bins=128)
    hf = cached_tiny_checkpoint(args.config)
    print(f"\ntiny AudioFlamingo3 checkpoint: {hf}")
    converted = args.out / f"{hf.name}-jax"
    status = step("convert", "omni_jax.convert", "to-jax", str(hf), str(converted), "--overwrite", "--quiet")
    clip = ["--audio", str(audio), "--max-new-tokens", args.max_new_tokens]
    title = "generate (random weights: the text is gibberish)"
    status = status or step(title, "omni_jax.generate", "--model", str(converted), *clip)
    status = status or step("parity", "omni_jax.parity", "--model", str(hf), *clip)
    return status
