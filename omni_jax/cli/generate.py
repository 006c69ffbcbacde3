"""python -m omni_jax.generate: audio, image or video file(s) and a request in, text out, streamed.

    python -m omni_jax.generate --model DIR --audio FILE [--audio FILE ...] [--prompt TEXT]
        [--max-new-tokens N] [--temperature T] [--json]
    python -m omni_jax.generate --model DIR --image FILE [--video FILE [--fps F] [--use-audio-in-video]]

DIR is an HF checkpoint folder or one converted by `python -m omni_jax.convert`; its config.json
`model_type` picks the family pipeline (omni_jax.families.registry). Several audio files are one batch
(the same request for each); so are several images / videos (Qwen3-Omni), one of each kind given per row.
--json prints one object with the token ids, the texts and the timings
(compilation included) instead of streaming.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


class Printer:
    """Streams the text of one row: prints what new tokens add, holding back incomplete characters."""

    def __init__(self, pipe):
        self.pipe, self.shown = pipe, ""

    def __call__(self, ids: np.ndarray) -> None:
        text = self.pipe.decode(ids[:1])[0].rstrip("\ufffd")
        if text.startswith(self.shown) and text != self.shown:
            sys.stdout.write(text[len(self.shown) :])
            sys.stdout.flush()
            self.shown = text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m omni_jax.generate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="HF checkpoint folder or an omni_jax conversion of one"
    )
    parser.add_argument("--audio", action="append", default=[], help="audio file (repeat for a batch)")
    parser.add_argument("--image", action="append", default=[], help="image file (Qwen3-Omni; repeatable)")
    parser.add_argument("--video", action="append", default=[], help="video file (Qwen3-Omni; repeatable)")
    parser.add_argument("--fps", type=float, default=2.0, help="video frames sampled per second (default 2)")
    parser.add_argument(
        "--use-audio-in-video", action="store_true", help="hear each video's sound track too (Qwen3-Omni)"
    )
    parser.add_argument(
        "--prompt", default=None, help="request for every clip (default: the model's transcription request)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="cast the parameters")
    parser.add_argument("--json", action="store_true", help="print ids, texts and timings as one JSON object")
    return parser.parse_args(argv)


def _prepare(pipe, args: argparse.Namespace, audios: list) -> dict:
    """The pipeline's inputs: one row per file of each kind given (the same request for each row)."""
    visual = {"images": args.image, "videos": args.video}
    rows = max(len(audios), len(args.image), len(args.video))
    if not rows:
        raise ValueError("give at least one --audio, --image or --video file")
    prompts = None if args.prompt is None else [args.prompt] * rows
    if not (args.image or args.video):
        return pipe.prepare(audios, prompts)
    if not getattr(pipe.processor, "visual", False):
        raise ValueError(f"{args.model} takes no images or videos (audio and text only)")
    options = {"fps": args.fps, "use_audio_in_video": args.use_audio_in_video} if args.video else {}
    return pipe.prepare(audios or None, prompts, **{k: v or None for k, v in visual.items()}, **options)


def run(args: argparse.Namespace) -> dict:
    """Load, prepare, generate (streaming unless --json). -> the --json object."""
    from omni_jax.audio import load_audio
    from omni_jax.families.registry import load_pipeline
    from omni_jax.inference.sampling import Sampling

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    clock = time.perf_counter()
    pipe = load_pipeline(args.model, dtype=args.dtype)
    loaded = time.perf_counter()
    audios = [load_audio(path) for path in args.audio]
    inputs = _prepare(pipe, args, audios)
    prepared = time.perf_counter()
    show = None if args.json or len(inputs["input_ids"]) > 1 else Printer(pipe)
    steps, first = [], None
    for tokens in pipe.stream(inputs, max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed):
        first = first or time.perf_counter()
        steps.append(tokens)
        if show:
            show(np.stack(steps, 1))
    done = time.perf_counter()
    ids = np.stack(steps, 1)
    texts = pipe.decode(ids)
    if show:
        print()
    elif not args.json:
        print("\n".join(f"[{i}] {text}" for i, text in enumerate(texts)))
    return {
        "model": args.model,
        "audio": args.audio,
        "image": args.image,
        "video": args.video,
        "prompt": args.prompt,
        "ids": ids.tolist(),
        "text": texts,
        "timings": {
            "load_s": loaded - clock,
            "prepare_s": prepared - loaded,
            "first_token_s": first - prepared,
            "generate_s": done - prepared,
            "steps": len(steps),
            "tokens_per_s": ids.size / (done - prepared),
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    return 0
