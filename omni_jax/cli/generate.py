"""python -m omni_jax.generate: audio file(s) and a request in, text out, streamed as it is generated.

    python -m omni_jax.generate --model DIR --audio FILE [--audio FILE ...] [--prompt TEXT]
        [--max-new-tokens N] [--temperature T] [--json]

DIR is an HF checkpoint folder or one converted by `python -m omni_jax.convert`; its config.json
`model_type` picks the family pipeline (omni_jax.families.registry). Several audio files are one batch
(the same request for each). --json prints one object with the token ids, the texts and the timings
(compilation included) instead of streaming. Exit status: 0 done, 1 loading or generation failed, 2 a usage
error (bad argument, unreadable audio file, unsupported folder), found before the model loads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from omni_jax import validation
from omni_jax.cli import common


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
    parser.add_argument("--audio", required=True, action="append", help="audio file (repeat for a batch)")
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


def check(args: argparse.Namespace) -> tuple:
    """Usage errors before the model loads: the folder's model_type has a pipeline, every audio file reads
    (finite samples), the sampling settings and max_new_tokens are valid. -> (sampling, clips)."""
    from omni_jax.audio import load_audio
    from omni_jax.families.registry import family
    from omni_jax.inference.sampling import Sampling

    validation.integer("--max-new-tokens", args.max_new_tokens, minimum=1)
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    found = family(validation.folder("--model", args.model))
    if found.load_pipeline is None:
        raise ValueError(f"{args.model}: {found.name} checkpoints have no generation pipeline yet")
    return sampling, [load_audio(path) for path in args.audio]


def run(args: argparse.Namespace, sampling, audios: list[np.ndarray]) -> dict:
    """Load, prepare, generate (streaming unless --json). -> the --json object."""
    from omni_jax.families.registry import load_pipeline

    clock = time.perf_counter()
    pipe = load_pipeline(args.model, dtype=args.dtype)
    loaded = time.perf_counter()
    inputs = pipe.prepare(audios, None if args.prompt is None else [args.prompt] * len(audios))
    prepared = time.perf_counter()
    show = None if args.json or len(audios) > 1 else Printer(pipe)
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

    def job(checked) -> None:
        result = run(args, *checked)
        if args.json:
            print(json.dumps(result))

    return common.run(lambda: check(args), job)
