"""The jitted train step on the tiny AF3 (text-only batches, float32 CPU): 1 micro-batch of 8 gives the
update of 4 micro-batches of 2 (here also with the layer scan rematerialised), frozen parameters stay
bit-identical and get no optimizer state; bfloat16 compute keeps float32 master weights and optimizer state
and a loss within 2e-2 (relative) of the float32 loss."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.nn.params import flatten_paths
from omni_jax.train import data, models
from omni_jax.train.step import Hyper, freeze_patterns, init_state, make_train_step, optimizer, split_params

FREEZE = ["decoder/embed", "decoder/layers/attn/*"]


@pytest.fixture(scope="module")
def setup(af3_folder, tmp_path_factory):
    model = models.load(af3_folder)
    folder = tmp_path_factory.mktemp("step")
    lines = [{"prompt": f"Question {i}?", "answer": "yes" if i % 2 else "no, " * i} for i in range(8)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    return model, data.read_manifest(folder / "train.jsonl", model, buckets=(48,))


def one_step(model, manifest, grad_accum, remat=None, compute_dtype="float32", rows=8):
    config = dataclasses.replace(model.config, decoder=dataclasses.replace(model.config.decoder, remat=remat))
    batch = data.Batches(manifest, model, batch_size=rows, grad_accum=grad_accum).load(np.arange(rows))
    hp = Hyper(
        learning_rate=1e-2, total_steps=10, warmup_steps=0, weight_decay=0.1, compute_dtype=compute_dtype
    )
    params = jax.tree.map(lambda a: a.copy(), model.params)
    trainable, frozen = split_params(params, freeze_patterns(FREEZE, model.family))
    tx = optimizer(hp)
    state, metrics = make_train_step(model.family, config, hp, tx)(
        init_state(trainable, tx, 0), frozen, batch
    )
    return state, frozen, metrics


def test_accumulation_frozen_parts_and_remat(setup):
    model, manifest = setup
    whole, frozen, m1 = one_step(model, manifest, 1)
    accumulated, frozen4, m4 = one_step(model, manifest, 4, remat="nothing_saveable")
    assert int(m1["tokens"]) == int(m4["tokens"]) > 0
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-6)
    for (path, a), (_, b) in zip(flatten_paths(whole.params), flatten_paths(accumulated.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6, err_msg=path)
    base = dict(flatten_paths(model.params))
    for path, leaf in flatten_paths(frozen4):  # frozen: bit for bit
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(base[path]), err_msg=path)
    trained = dict(flatten_paths(whole.params))
    assert "decoder/embed/embedding" not in trained and "encoder/pos_embed" not in trained
    assert "decoder/layers/attn/q/kernel" not in trained and "decoder/layers/post_norm/scale" in trained
    assert not np.array_equal(
        np.asarray(trained["decoder/lm_head/kernel"]), np.asarray(base["decoder/lm_head/kernel"])
    )
    adam = whole.opt_state[1][0]  # chain(clip, adamw): ScaleByAdamState
    assert jax.tree.structure(adam.mu) == jax.tree.structure(whole.params)  # no moments for frozen leaves


def test_bfloat16_compute_keeps_float32_master_weights_and_optimizer_state(setup):
    model, manifest = setup
    state, _, metrics = one_step(model, manifest, 1, compute_dtype="bfloat16", rows=2)
    leaves = jax.tree.leaves((state.params, state.opt_state))
    assert {a.dtype for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)} == {np.dtype("float32")}
    batch = data.Batches(manifest, model, batch_size=2).load(np.arange(2))
    loss = jax.jit(lambda p, b: models.mean_loss(model.family, model.config, p, b))
    reference = float(loss(model.params, {k: v[0] for k, v in batch.items()}))  # float32
    np.testing.assert_allclose(float(metrics["loss"]), reference, rtol=2e-2)  # bfloat16: 8 mantissa bits
    assert float(metrics["loss"]) != reference  # the step did run in bfloat16
