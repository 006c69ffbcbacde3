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
import contextlib
import hashlib
import importlib.resources
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from omni_jax.audio import load_audio, log_mel
from omni_jax.audio.picture import save_spectrogram_png

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny-audioflamingo3.json"
CACHE = ROOT / ".cache"


def shipped_speech() -> Path:
    """The bundled espeak-ng clip ('please call stella and ask her to bring these things with her from the
    store')."""
    return Path(str(importlib.resources.files("omni_jax") / "assets" / "speech.wav"))


def tiny_checkpoint(folder: str | Path, config: str | Path = TINY_CONFIG, seed: int = 0) -> Path:
    """Write a random AudioFlamingo3ForConditionalGeneration of `config` (HF config.json content) and the tiny
    tokenizer into `folder`. Weights are redrawn (norm scales 1 + 0.1 N(0, 1), the rest 0.1 N(0, 1)) so that
    every path matters and greedy choices are far from ties; lm_head rows of ids the tokenizer lacks are zero,
    so generated ids always decode to text."""
    import torch
    import transformers

    from omni_jax.processing import Tokenizer, save_tokenizer_files

    folder = Path(folder)
    save_tokenizer_files(folder, "audioflamingo3")
    hf_config = transformers.AudioFlamingo3Config.from_dict(json.loads(Path(config).read_text()))
    torch.manual_seed(seed)
    model = transformers.AudioFlamingo3ForConditionalGeneration(hf_config).eval()
    generator = torch.Generator().manual_seed(seed)
    known = torch.tensor(sorted(Tokenizer.from_pretrained(folder).backend.get_vocab().values()))
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = name.endswith(".weight") and "norm" in name
            p.copy_((1.0 if norm else 0.0) + 0.1 * torch.randn(p.shape, generator=generator))
        head = model.lm_head.weight
        head.copy_(torch.zeros_like(head).index_copy_(0, known, head[known]))
    model.save_pretrained(folder)
    return folder


def cached_tiny_checkpoint(config: Path = TINY_CONFIG) -> Path:
    """The tiny HF folder of `config` under .cache/, built on first use (atomically)."""
    recipe = config.read_bytes() + inspect.getsource(tiny_checkpoint).encode()
    folder = CACHE / f"{config.stem}-{hashlib.sha256(recipe).hexdigest()[:10]}"
    if not (folder / "config.json").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            built = tiny_checkpoint(Path(tmp) / "hf", config)
            with contextlib.suppress(OSError):  # another process built it first
                built.rename(folder)
    return folder


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


if __name__ == "__main__":
    raise SystemExit(main())
