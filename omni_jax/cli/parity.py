"""python -m omni_jax.parity: a per-stage parity table of an HF checkpoint against transformers.

    python -m omni_jax.parity --model HF_DIR --audio FILE [--audio FILE ...] [--prompt TEXT]
        [--max-new-tokens N]

Stages (processor features, encoder, projector / fusion, prefill logits, greedy tokens) come from the family's
parity table (omni_jax.families.<family>.parity). Exit status: 0 all within tolerance, 1 a stage above its
tolerance (or the job failed), 2 a usage error (found before transformers loads anything).
"""

from __future__ import annotations

import argparse

from omni_jax import validation
from omni_jax.cli import common
from omni_jax.convert.checkpoint import MANIFEST


def table(reports) -> str:
    """The reports as an aligned text table."""
    rows = [("stage", "max abs", "max rel", "atol", "shape", "verdict")]
    rows += [
        (r.name, f"{r.max_abs_diff:.3g}", f"{r.max_rel_diff:.3g}", f"{r.atol:g}", "x".join(map(str, r.shape)),
         "ok" if r.ok else "FAIL")
        for r in reports
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_jax.parity", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF checkpoint folder (transformers loads it)")
    parser.add_argument("--audio", required=True, action="append", help="audio file (repeat for a batch)")
    parser.add_argument(
        "--prompt", default=None, help="request for every clip (default: the transcription request)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args(argv)
    return common.run(lambda: check(args), lambda checked: job(args, *checked))


def check(args: argparse.Namespace) -> tuple:
    """Usage errors before transformers loads anything. -> (family, clips)."""
    from omni_jax.audio import load_audio
    from omni_jax.families.registry import family

    validation.integer("--max-new-tokens", args.max_new_tokens, minimum=1)
    folder = validation.folder("--model", args.model)
    if (folder / MANIFEST).is_file():
        raise ValueError(f"{folder} is an omni_jax conversion; parity needs the HF folder transformers loads")
    found = family(folder)
    if found.parity.stages is None:
        raise ValueError(f"{args.model}: {found.name} checkpoints have no per-stage parity table yet")
    return found, [load_audio(path) for path in args.audio]


def job(args: argparse.Namespace, found, audios) -> int:
    """The table (transformers' own logging and progress bars silenced); FAILED when a stage is off."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    prompts = None if args.prompt is None else [args.prompt] * len(audios)
    reports = found.parity.stages(args.model, audios, prompts, max_new_tokens=args.max_new_tokens)
    print(table(reports))
    failed = [r.name for r in reports if not r.ok]
    print(f"parity: {'FAIL (' + ', '.join(failed) + ')' if failed else 'all stages within tolerance'}")
    return common.FAILED if failed else common.OK
