"""python -m omni_jax.train --config RECIPE.json [--resume] [--set key=value ...]
[--coordinator HOST:PORT --num-processes N --process-id I]: fine-tune a model as a recipe says.

Exit status as every omni_jax command (omni_jax.cli.common): 2 for a bad recipe, key or flag (found before
anything loads), 1 when the run fails (a bad manifest line, a missing audio file, a checkpoint of another
config), 130 when interrupted."""

from __future__ import annotations

import argparse

from omni_jax.cli import common


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m omni_jax.train", description=__doc__)
    p.add_argument("--config", required=True, help="recipe JSON (see train/*.json)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    p.add_argument("--coordinator", help="jax.distributed coordinator HOST:PORT (multi-process runs)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    return p


def check(args: argparse.Namespace):
    """The recipe (every key checked) and the multi-process flags; jax.distributed starts here, before the
    backend does. -> the recipe."""
    import jax

    from omni_jax.train.loop import distributed_from_env
    from omni_jax.train.recipe import Recipe

    recipe = Recipe.load(args.config, args.set)
    flags = (args.coordinator, args.num_processes, args.process_id)
    if any(f is not None for f in flags):
        if any(f is None for f in flags):
            raise ValueError("--coordinator, --num-processes and --process-id go together")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif env := distributed_from_env():
        jax.distributed.initialize(**env)
    return recipe


def job(args: argparse.Namespace, recipe) -> None:
    import jax

    from omni_jax.train.loop import run

    history = run(recipe, resume=args.resume)
    if history and jax.process_index() == 0:
        print(f"done: {len(history)} steps, final loss {history[-1]['loss']:.4f}; wrote {recipe.output_dir}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return common.run(lambda: check(args), lambda recipe: job(args, recipe))
