"""python -m omni_jax.parity: a per-stage parity table of an HF checkpoint against transformers.

    python -m omni_jax.parity --model HF_DIR --audio FILE [--audio FILE ...] [--prompt TEXT]
        [--max-new-tokens N]

Stages (processor features, encoder, projector / fusion, prefill logits, greedy tokens) come from the family's
parity table (omni_jax.families.<family>.parity); the exit status is 1 when any stage is above its tolerance.
"""

from __future__ import annotations

import argparse
import sys


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
    try:
        from omni_jax.audio import load_audio
        from omni_jax.families.registry import family

        found = family(args.model)
        if found.parity.stages is None:
            raise ValueError(f"{args.model}: {found.name} checkpoints have no per-stage parity table yet")
        audios = [load_audio(path) for path in args.audio]
        prompts = None if args.prompt is None else [args.prompt] * len(audios)
        reports = found.parity.stages(args.model, audios, prompts, max_new_tokens=args.max_new_tokens)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(reports))
    failed = [r.name for r in reports if not r.ok]
    print(f"parity: {'FAIL (' + ', '.join(failed) + ')' if failed else 'all stages within tolerance'}")
    return 1 if failed else 0
