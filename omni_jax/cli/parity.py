"""python -m omni_jax.parity: a per-stage parity table of an HF checkpoint against transformers.

    python -m omni_jax.parity --model HF_DIR --audio FILE [--audio FILE ...] [--prompt TEXT]
        [--max-new-tokens N]
    python -m omni_jax.parity --model QWEN3_OMNI_DIR [--audio FILE] [--image FILE] [--video FILE [--fps F]
        [--use-audio-in-video]] [--prompt TEXT]

Stages (processor features, encoder, projector / fusion, prefill logits, greedy tokens) come from the family's
parity table (omni_jax.families.<family>.parity). Each file is one row of the batch (one file of each kind
given per row). Qwen3-Omni also takes images and videos: the table then compares the processor's grids and
pixel values (against transformers' image processor: its torchvision backend, else the PIL one, within 2
uint8 levels), the vision encoder and its deepstack outputs, and the model stages on the visual inputs (both
sides fed transformers' pixel values). Exit status: 0 all within tolerance, 1 a stage above its tolerance (or
the job failed), 2 a usage error (found before transformers loads anything).
"""

from __future__ import annotations

import argparse

from omni_jax import validation
from omni_jax.cli import common
from omni_jax.convert.checkpoint import MANIFEST


def _numbers(r) -> tuple[str, str, str]:
    if not r.compared:
        return "-", "-", "-"
    return f"{r.max_abs_diff:.3g}", f"{r.max_rel_diff:.3g}", f"{r.atol:g}"


def table(reports) -> str:
    """The reports as an aligned text table."""
    rows = [("stage", "max abs", "max rel", "atol", "shape", "verdict")]
    rows += [(r.name, *_numbers(r), "x".join(map(str, r.shape)), r.verdict) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_jax.parity", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF checkpoint folder (transformers loads it)")
    parser.add_argument("--audio", action="append", default=[], help="audio file (repeat for a batch)")
    parser.add_argument("--image", action="append", default=[], help="image file (Qwen3-Omni; repeatable)")
    parser.add_argument("--video", action="append", default=[], help="video file (Qwen3-Omni; repeatable)")
    parser.add_argument("--fps", type=float, default=2.0, help="video frames sampled per second (default 2)")
    parser.add_argument(
        "--use-audio-in-video", action="store_true", help="hear each video's sound track too (Qwen3-Omni)"
    )
    parser.add_argument(
        "--prompt", default=None,
        help="request for every row (default: the transcription request; for images / video without audio "
        "Qwen3-Omni's 'Describe what you see.')",
    )  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args(argv)
    return common.run(lambda: check(args), lambda checked: job(args, *checked))


def check(args: argparse.Namespace) -> tuple:
    """Usage errors before transformers loads anything. -> (family, clips)."""
    from omni_jax.audio import load_audio
    from omni_jax.families.registry import family

    validation.integer("--max-new-tokens", args.max_new_tokens, minimum=1)
    check_rows(args)
    folder = validation.folder("--model", args.model)
    if (folder / MANIFEST).is_file():
        raise ValueError(f"{folder} is an omni_jax conversion; parity needs the HF folder transformers loads")
    found = family(folder)
    if found.parity.stages is None:
        raise ValueError(f"{args.model}: {found.name} checkpoints have no per-stage parity table yet")
    if (args.image or args.video) and not found.parity.visual:
        raise ValueError(
            f"{args.model}: {found.name} takes no images or videos (its parity table is audio only)"
        )
    common.check_visual_files(args.image, args.video, sound=args.use_audio_in_video)
    return found, [load_audio(path) for path in args.audio]


def check_rows(args: argparse.Namespace) -> None:
    """At least one input, one file of each kind given per row, --fps > 0, --use-audio-in-video on videos."""
    given = {f"--{k}": n for k in ("audio", "image", "video") if (n := len(getattr(args, k)))}
    if not given:
        raise ValueError("give at least one --audio, --image or --video file")
    if len(set(given.values())) > 1:
        counts = ", ".join(f"{n} {k}" for k, n in given.items())
        raise ValueError(f"each row takes one file of each kind given: got {counts}")
    if validation.finite("--fps", args.fps) <= 0:
        raise ValueError(f"--fps must be positive, got {args.fps}")
    if args.use_audio_in_video and (not args.video or args.audio):
        raise ValueError(
            "--use-audio-in-video needs --video and no --audio (each video's sound track is heard)"
        )


def job(args: argparse.Namespace, found, audios) -> int:
    """The table (transformers' own logging and progress bars silenced); FAILED when a stage is off."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    rows = max(len(audios), len(args.image), len(args.video))
    prompts = None if args.prompt is None else [args.prompt] * rows
    visual = {"images": args.image or None, "videos": args.video or None}
    if args.video:
        visual |= {"fps": args.fps, "use_audio_in_video": args.use_audio_in_video}
    reports = found.parity.stages(
        args.model, audios or None, prompts, max_new_tokens=args.max_new_tokens,
        **(visual if args.image or args.video else {}),
    )  # fmt: skip
    print(table(reports))
    failed = [r.name for r in reports if not r.ok]
    print(f"parity: {'FAIL (' + ', '.join(failed) + ')' if failed else 'all stages within tolerance'}")
    return common.FAILED if failed else common.OK
