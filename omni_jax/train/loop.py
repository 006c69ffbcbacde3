"""The training run of a recipe: load, shard, (resume,) step, log, checkpoint, evaluate, export.

    history = run(Recipe.load("train/af3-tiny.json"), resume=True)

Writes into `output_dir`: metrics.jsonl (one object per optimizer step, flushed as the step ends; on resume
the lines past the restored step are dropped and new ones appended), checkpoints/ (orbax), tensorboard/
(event files), loss.png and final/ (an omni_jax checkpoint folder). In a multi-process run every process
steps and saves (orbax saves are collective); process 0 alone writes metrics, plots and the export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from omni_jax.nn.params import logical_axes
from omni_jax.sharding import logical_spec, make_mesh, named_sharding, use_mesh
from omni_jax.train import lora, models
from omni_jax.train.checkpoint import Checkpoints, fingerprint
from omni_jax.train.data import Batches, read_manifest
from omni_jax.train.export import write_final
from omni_jax.train.metrics import MetricsLog
from omni_jax.train.recipe import Recipe
from omni_jax.train.step import (
    Hyper,
    check_patterns,
    freeze_patterns,
    init_state,
    make_eval_step,
    make_train_step,
    merge_params,
    optimizer,
    split_params,
)


def with_remat(model: models.TrainModel, policy: str | None):
    """The model config with the decoder's layer scan rematerialised under `policy`."""
    if policy is None:
        return model.config
    name = "decoder" if hasattr(model.config, "decoder") else "text"
    return dataclasses.replace(
        model.config, **{name: dataclasses.replace(getattr(model.config, name), remat=policy)}
    )


def with_lora(model: models.TrainModel, config, recipe: Recipe):
    """(host params, specs, freeze patterns, always-trained patterns): with `recipe.lora`, adapters beside
    the targeted decoder linears train and the decoder's own weights freeze (the other parts follow
    `freeze`)."""
    specs = model.family.system.param_specs(config)
    patterns = freeze_patterns(recipe.freeze, model.family)
    if recipe.lora is None:
        return model.params, specs, patterns, ()
    values, adapter_specs = lora.adapters(specs, model.family.decoder, recipe.lora, recipe.seed)
    merged = merge_params(model.params, values), merge_params(specs, adapter_specs)
    return *merged, (*patterns, model.family.decoder), lora.ADAPTERS


def place_params(params: dict, specs: dict, mesh) -> dict:
    """Host parameters -> global arrays sharded by their logical axes (each process fills its shards)."""
    host = jax.tree.map(np.asarray, params)
    axes = logical_axes(specs)

    def put(a, ax):
        return jax.make_array_from_callback(a.shape, named_sharding(mesh, ax, a.shape), lambda i: a[i])

    return jax.tree.map(put, host, axes, is_leaf=lambda x: isinstance(x, np.ndarray))


def global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Per-process (k, rows, ...) slices -> global (k, rows x processes, ...) arrays, rows over the batch
    mesh axes."""
    n = jax.process_count()

    def put(name, a):
        shape = (a.shape[0], a.shape[1] * n, *a.shape[2:])
        spec = logical_spec((None, "batch", *[None] * (a.ndim - 2)), shape, mesh)
        if n > 1 and spec[1] is None:
            raise ValueError(
                f"batch array {name} {shape}: its {shape[1]} rows per micro-batch do not divide over the "
                f"batch mesh axes {dict(mesh.shape)}; raise batch_size or lower grad_accum"
            )
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), a, shape)

    return {k: put(k, v) for k, v in local.items()}


def host_copy(tree, mesh) -> dict:
    """Every leaf replicated over the mesh (one collective on the training devices) and copied to the host."""
    full = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, PartitionSpec()))(tree)
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), full)


def barrier(name: str) -> None:
    """All processes meet here, through the coordination service (no device collective, 10-min timeout)."""
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(name, processes=set(range(jax.process_count())), timeout=600)


def synced(fn):
    """In a multi-process run: `fn` (jitted) compiled ahead for each batch shape, the processes meeting
    after each compilation, so that its first cross-process collective opens within gloo's 30-s rendezvous
    window however long each process compiled."""
    if jax.process_count() == 1:
        return fn
    compiled = {}

    def call(*args):
        key = str(jax.tree.map(lambda a: (a.shape, a.dtype), args[-1]))
        if key not in compiled:
            compiled[key] = fn.lower(*args).compile()
            barrier(f"omni_jax.train compiled {getattr(fn, '__name__', 'step')} {len(compiled)}")
        return compiled[key](*args)

    return call


def _host(metrics: dict) -> dict[str, float]:
    return {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}


def evaluate(step_fn, state, frozen, data: Batches, mesh) -> float:
    nll = n = 0.0
    for local in data.dataset():
        batch_nll, batch_n = step_fn(state.params, frozen, global_batch(local, mesh))
        nll, n = nll + float(np.asarray(batch_nll.addressable_data(0))), n + int(batch_n.addressable_data(0))
    return nll / max(n, 1)


def run(recipe: Recipe, *, resume: bool = False) -> list[dict]:
    """Train as the recipe says; returns the metrics of the steps run by this call."""
    out = Path(recipe.output_dir)
    primary = jax.process_index() == 0
    model = models.load(recipe.model)
    config = with_remat(model, recipe.remat)
    manifest = read_manifest(recipe.train_data, model, recipe.length_buckets)
    evals = (
        None if recipe.eval_data is None else read_manifest(recipe.eval_data, model, recipe.length_buckets)
    )
    check_patterns(model.params, recipe.freeze)
    hp = Hyper(
        learning_rate=recipe.learning_rate, total_steps=recipe.steps, warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay, max_grad_norm=recipe.max_grad_norm, b1=recipe.adam_b1,
        b2=recipe.adam_b2, eps=recipe.adam_eps, compute_dtype=recipe.compute_dtype,
        aux_coef=model.aux_coef if recipe.router_aux_loss_coef is None else recipe.router_aux_loss_coef,
    )  # fmt: skip
    shards = dict(process_index=jax.process_index(), process_count=jax.process_count())
    data = Batches(manifest, model, recipe.batch_size, recipe.grad_accum, recipe.seed, **shards)
    eval_data = None
    if evals is not None:
        eval_data = Batches(
            evals, model, recipe.batch_size, recipe.grad_accum, shuffle=False, repeat=False, **shards
        )
    mesh = make_mesh(**(recipe.mesh_shape or {"data": jax.device_count()}))
    host, specs, patterns, train = with_lora(model, config, recipe)
    with use_mesh(mesh):
        params = place_params(host, specs, mesh)
        trainable, frozen = split_params(params, patterns, train)
        tx = optimizer(hp)
        state = jax.jit(lambda t: init_state(t, tx, recipe.seed))(trainable)
        barrier("omni_jax.train checkpoints")
        ckpts = Checkpoints(
            out / "checkpoints", every=recipe.checkpoint_every, keep=recipe.keep_checkpoints,
            fingerprint=fingerprint(model.hf_config, trainable),
        )  # fmt: skip
        if not resume and ckpts.manager.all_steps():
            raise ValueError(
                f"{out / 'checkpoints'} holds checkpoints: pass --resume or use a new output_dir"
            )
        start, state, saved = ckpts.restore_latest(state) if resume else (None, state, None)
        start = start or 0
        it = data.iterator(None if saved is None else saved["iterator"])
        train_step = synced(make_train_step(model.family, config, hp, tx))
        eval_step = None if eval_data is None else synced(make_eval_step(model.family, config, hp))
        log = MetricsLog(out, start, recipe.steps, recipe.log_every) if primary else None
        if primary:
            (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
        history = []
        try:
            for step in range(start + 1, recipe.steps + 1):
                t0 = time.perf_counter()
                state, metrics = train_step(state, frozen, global_batch(next(it), mesh))
                record = {"step": step, **_host(metrics)}
                record["tokens_per_s"] = record["input_tokens"] / (time.perf_counter() - t0)
                if record["tokens"] == 0:
                    raise ValueError(f"step {step}: every label of the batch is -100 (nothing to train on)")
                ckpts.save(step, state, {"iterator": it.get_state()}, force=step == recipe.steps)
                due = recipe.eval_every and step % recipe.eval_every == 0
                if eval_step is not None and (due or step == recipe.steps):
                    record["eval_loss"] = evaluate(eval_step, state, frozen, eval_data, mesh)
                history.append(record)
                if log is not None:
                    log.write(record)
            final = host_copy(merge_params(state.params, frozen), mesh)  # collective: before the host work
            final = lora.merge(final) if recipe.lora else final
        finally:
            ckpts.close()
            if log is not None:
                log.close()
    if primary:
        write_final(model.path, final, out / "final")
    return history


def distributed_from_env() -> dict:
    """jax.distributed arguments from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID."""
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" not in env:
        return {}
    return {
        "coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
        "num_processes": int(env.get("JAX_NUM_PROCESSES", 1)),
        "process_id": int(env.get("JAX_PROCESS_ID", 0)),
    }
