"""python -m omni_jax.generate: audio, image or video file(s) and a request in, text out, streamed.

    python -m omni_jax.generate --model DIR --audio FILE [--audio FILE ...] [--prompt TEXT]
        [--max-new-tokens N] [--temperature T] [--json]
    python -m omni_jax.generate --model QWEN3_OMNI_DIR --audio FILE --prompt TEXT --speak out.wav
        [--speaker NAME] [--stream] [--packet FRAMES] [--talker-max-new-tokens N] [--talker-greedy]
    python -m omni_jax.generate --model DIR --image FILE [--video FILE [--fps F] [--use-audio-in-video]]

DIR is an HF checkpoint folder or one converted by `python -m omni_jax.convert`; its config.json
`model_type` picks the family pipeline (omni_jax.families.registry). Several audio files are one batch
(the same request for each); so are several images / videos (Qwen3-Omni), one of each kind given per row.
--json prints one object with the token ids, the texts and the timings (compilation included) instead of
streaming. --speak (Qwen3-Omni with talker weights, one clip) also writes the spoken answer (24 kHz); with
--stream the text is printed and the audio written as they come. Exit status: 0 done, 1 loading or
generation failed, 2 a usage error (bad argument, unreadable audio, image or video file, unsupported
folder), found before the model loads.
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
    speech = parser.add_argument_group("speech output (Qwen3-Omni)")
    speech.add_argument("--speak", default=None, help="write the spoken answer to this .wav/.flac/.ogg")
    speech.add_argument("--speaker", default="Ethan", help="voice (default Ethan)")
    speech.add_argument("--stream", action="store_true", help="write audio packets as they are generated")
    speech.add_argument("--packet", type=int, default=4, help="codec frames (80 ms) per streamed packet")
    speech.add_argument("--talker-max-new-tokens", type=int, default=4096)
    speech.add_argument("--talker-greedy", action="store_true", help="greedy talker (default: sampled)")
    return parser.parse_args(argv)


def _prepare(pipe, args: argparse.Namespace, audios: list) -> dict:
    """The pipeline's inputs: one row per file of each kind given (the same request for each row)."""
    visual = {"images": args.image, "videos": args.video}
    rows = max(len(audios), len(args.image), len(args.video))
    prompts = None if args.prompt is None else [args.prompt] * rows
    if not (args.image or args.video):
        return pipe.prepare(audios, prompts)
    if not getattr(pipe.processor, "visual", False):
        raise ValueError(f"{args.model} takes no images or videos (audio and text only)")
    options = {"fps": args.fps, "use_audio_in_video": args.use_audio_in_video} if args.video else {}
    return pipe.prepare(audios or None, prompts, **{k: v or None for k, v in visual.items()}, **options)


def check(args: argparse.Namespace) -> tuple:
    """Usage errors before the model loads: the folder's model_type has a pipeline, every audio, image and
    video file reads (finite samples, a decodable frame), the sampling settings and max_new_tokens are valid.
    -> (sampling, clips)."""
    from omni_jax.audio import load_audio
    from omni_jax.families.registry import family
    from omni_jax.inference.sampling import Sampling

    validation.integer("--max-new-tokens", args.max_new_tokens, minimum=1)
    if not (args.audio or args.image or args.video):
        raise ValueError("give at least one --audio, --image or --video file")
    if args.speak and len(args.audio) != 1:
        raise ValueError(f"--speak takes one --audio, got {len(args.audio)}")
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    common.check_visual_files(args.image, args.video, sound=args.use_audio_in_video)
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
    inputs = _prepare(pipe, args, audios)
    prepared = time.perf_counter()
    if args.speak:
        return speak(args, pipe, inputs, sampling, {"load_s": loaded - clock, "prepare_s": prepared - loaded})
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


def speak(args: argparse.Namespace, pipe, inputs: dict, sampling, timings: dict) -> dict:
    """--speak: text and speech of one clip; with --stream printed / written packet by packet."""
    from omni_jax.audio import AudioWriter

    options = dict(
        max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed, return_audio=True,
        speaker=args.speaker, talker_max_new_tokens=args.talker_max_new_tokens,
        talker_do_sample=not args.talker_greedy,
    )  # fmt: skip
    start, first_audio, text = time.perf_counter(), None, ""
    with AudioWriter(args.speak, 24000) as writer:
        if args.stream:
            for event in pipe.stream(inputs, packet=args.packet, **options):
                if event.kind == "text":
                    text += event.data[0]
                    if not args.json:
                        sys.stdout.write(event.data[0])
                        sys.stdout.flush()
                else:
                    first_audio = first_audio or time.perf_counter()
                    writer.write(event.data[0])
            ids = None  # the stream gives text deltas
        else:
            out = pipe.generate(inputs, **options)
            ids, text = out.ids, pipe.decode(out.ids)[0]
            first_audio = time.perf_counter()
            writer.write(out.audio[0])
            if not args.json:
                sys.stdout.write(text)
    done = time.perf_counter()
    if not args.json:
        print(f"\n[speech: {writer.samples / 24000:.2f} s at 24 kHz -> {args.speak}]")
    return {
        "model": args.model, "audio": args.audio, "prompt": args.prompt,
        "ids": None if ids is None else ids.tolist(),
        "text": [text],
        "speech": {"path": str(args.speak), "samples": writer.samples, "sample_rate": 24000},
        "timings": {**timings, "first_audio_s": (first_audio or done) - start, "generate_s": done - start},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job(checked) -> None:
        result = run(args, *checked)
        if args.json:
            print(json.dumps(result))

    return common.run(lambda: check(args), job)
