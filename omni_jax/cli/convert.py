"""python -m omni_jax.convert {to-jax,to-hf,inspect}: HF checkpoint folders to JAX and back."""

from __future__ import annotations

import argparse
import sys

from omni_jax.convert import run
from omni_jax.convert.keymap import ConversionError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_jax.convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    to_jax = sub.add_parser("to-jax", help="HF folder (safetensors or pytorch_model*.bin) -> omni_jax folder")
    to_jax.add_argument("src")
    to_jax.add_argument("dst")
    to_jax.add_argument(
        "--dtype", choices=run.DTYPES, help="cast parameters (default: keep the source dtype)"
    )
    to_jax.add_argument(
        "--format",
        choices=run.FORMATS,
        default="safetensors",
        dest="fmt",
        help="safetensors (default) streams within the memory goal; orbax holds one more copy of each array",
    )
    to_hf = sub.add_parser("to-hf", help="omni_jax folder -> HF folder (hub layout, safetensors)")
    to_hf.add_argument("src")
    to_hf.add_argument("dst")
    for p in (to_jax, to_hf):
        p.add_argument("--overwrite", action="store_true", help="replace DST once the new one is complete")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    inspect = sub.add_parser("inspect", help="key tree with shapes and dtypes, and how keys map")
    inspect.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "to-jax":
            manifest = run.to_jax(
                args.src, args.dst, dtype=args.dtype, fmt=args.fmt, overwrite=args.overwrite, quiet=args.quiet
            )
            print(
                f"wrote {args.dst}: {len(manifest['params'])} parameters ({args.fmt}), "
                f"parts {manifest['parts']}"
            )
        elif args.command == "to-hf":
            files = run.to_hf(args.src, args.dst, overwrite=args.overwrite, quiet=args.quiet)
            print(f"wrote {args.dst}: {', '.join(files)}")
        else:
            print(run.describe(args.path))
    except (ConversionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
