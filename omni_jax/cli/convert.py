"""python -m omni_jax.convert {to-jax,to-hf,inspect}: HF checkpoint folders to JAX and back.

Exit status (omni_jax.cli.common): 0 done, 1 the conversion or inspection found problems (all listed),
2 a usage error (no such source folder, destination exists without --overwrite), 130 interrupted (SIGINT or
SIGTERM; the partial output is removed)."""

from __future__ import annotations

import argparse

from omni_jax import validation
from omni_jax.cli import common
from omni_jax.convert import run


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
    return common.run(lambda: check(args), lambda _: job(args))


def check(args: argparse.Namespace) -> None:
    """Usage errors, before any weight is read: the source must be a folder; the destination must be free
    unless --overwrite."""
    validation.folder("source folder", args.path if args.command == "inspect" else args.src)
    if args.command != "inspect":
        dst = validation.path("destination", args.dst)
        if dst.exists() and not args.overwrite:
            raise ValueError(f"{dst} exists; pass --overwrite to replace it")


def job(args: argparse.Namespace) -> int:
    if args.command == "to-jax":
        manifest = run.to_jax(
            args.src, args.dst, dtype=args.dtype, fmt=args.fmt, overwrite=args.overwrite, quiet=args.quiet
        )
        n = len(manifest["params"])
        print(f"wrote {args.dst}: {n} parameters ({args.fmt}), parts {manifest['parts']}")
    elif args.command == "to-hf":
        files = run.to_hf(args.src, args.dst, overwrite=args.overwrite, quiet=args.quiet)
        print(f"wrote {args.dst}: {', '.join(files)}")
    else:
        text, problems = run.inspect(args.path)
        print(text)
        if problems:
            return common.fail(f"{len(problems)} problem(s) in {args.path}", common.FAILED)
    return common.OK
