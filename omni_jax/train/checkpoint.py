"""Train-state checkpoints with orbax's CheckpointManager: asynchronous saves every N steps, keep K, resume
from the newest complete step, refuse a checkpoint of another model or freeze set.

    ckpt = Checkpoints(output_dir / "checkpoints", every=50, keep=3, fingerprint=fingerprint(model, state))
    ckpt.save(step, state, {"iterator": it.get_state()})      # returns after the device-to-host copy
    step, state, data = ckpt.restore_latest(state)             # (None, state, None) on a fresh run
    ckpt.close()                                               # waits for the last save

A step is written into `<step>.orbax-checkpoint-tmp/` and renamed when complete (orbax's atomic rename on
local disks), so a run killed at any moment, also mid-save, leaves only complete steps plus a temporary
folder that the next manager removes. The data item holds the iterator position (global: every process
reads the same position) and the fingerprint: the parameter paths and shapes of the trained tree.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from omni_jax.nn.params import flatten_paths


def fingerprint(hf_config: dict, trainable: dict) -> dict:
    """What a checkpoint must match to be resumed: the model type and every trained parameter's shape."""
    return {
        "model_type": hf_config.get("model_type"),
        "params": {path: list(leaf.shape) for path, leaf in flatten_paths(trainable)},
    }


def check_fingerprint(saved: dict, current: dict, where: Path) -> None:
    """A clear error naming every parameter that differs between the checkpoint and this run."""
    problems = []
    if saved.get("model_type") != current["model_type"]:
        problems.append(f"model_type {saved.get('model_type')!r} != {current['model_type']!r}")
    old, new = saved.get("params", {}), current["params"]
    problems += [
        f"{p}: checkpoint {old[p]} vs model {new[p]}" for p in sorted(old) if p in new and old[p] != new[p]
    ]
    problems += [f"{p}: only in the checkpoint" for p in sorted(set(old) - set(new))]
    problems += [f"{p}: not in the checkpoint" for p in sorted(set(new) - set(old))]
    if problems:
        raise ValueError(
            f"{where} was written for a different model configuration (or freeze set); mismatched "
            f"parameters: "
            + "; ".join(problems[:20])
            + (f" (+{len(problems) - 20} more)" if len(problems) > 20 else "")
        )


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a live tree: the restore target."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


@functools.cache
def _one_writer_per_array() -> None:
    """Each array saved by one replica: orbax's replica-parallel saving (its default off GPU) slices every
    replicated array per replica, one compiled slice program per array shape and replica."""
    handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpoints:
    def __init__(self, directory: Path, *, every: int, keep: int, fingerprint: dict):
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint_every ({every}) and keep_checkpoints ({keep}) must be >= 1")
        _one_writer_per_array()
        self.directory = Path(directory).absolute()
        self.fingerprint = fingerprint
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep, cleanup_tmp_directories=True,
            enable_async_checkpointing=True,
        )  # fmt: skip
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, data: dict, *, force: bool = False) -> bool:
        """Start an asynchronous save of `state` (and the JSON `data`) at `step` if the interval says so."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({**data, "fingerprint": self.fingerprint}),
        )
        return self.manager.save(step, args=args, force=force)

    def restore_latest(self, state: Any) -> tuple[int | None, Any, dict | None]:
        """(step, state, data) of the newest complete step, checked against this run; (None, state, None)
        when there is none. A step that fails to restore falls back to the one before."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            data = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
            check_fingerprint(data.get("fingerprint", {}), self.fingerprint, self.directory / str(step))
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract(state)))
                )["state"]
            except (OSError, ValueError) as e:  # a step damaged outside orbax: try the previous one
                print(f"checkpoint step {step} unreadable ({e}); trying the previous one")
                continue
            return step, restored, data
        return None, state, None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
