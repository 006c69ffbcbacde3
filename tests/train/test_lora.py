"""LoRA on the tiny AF3 (text-only batches, float32 CPU, fsdp 2 x tensor 2): a few steps with accumulation
and the rematerialised layer scan lower the loss, train only the adapters (sharded by the kernels' axes) and
leave every base weight bit-identical; the merged export's logits equal the unmerged LoRA logits; a bad LoRA
key or a target that matches nothing is a clear error."""

import functools
import json

import jax
import numpy as np
import pytest

from omni_jax.models import decoder
from omni_jax.nn.params import flatten_paths
from omni_jax.sharding import make_mesh, use_mesh
from omni_jax.train import data, lora, models
from omni_jax.train.export import write_final
from omni_jax.train.loop import host_copy, place_params, with_lora, with_remat
from omni_jax.train.recipe import Recipe
from omni_jax.train.step import Hyper, init_state, make_train_step, merge_params, optimizer, split_params

TARGETS = ["*/attn/*", "*/mlp/down", "decoder/lm_head"]


def recipe_of(folder, **lora_keys):
    return Recipe.from_dict(
        {
            "model": "m", "train_data": "train.jsonl", "output_dir": "out", "steps": 3, "batch_size": 4,
            "grad_accum": 2, "learning_rate": 3e-2, "freeze": ["encoder", "projector"],
            "remat": "nothing_saveable", "lora": {"rank": 4, "alpha": 8, "targets": TARGETS} | lora_keys,
        },
        folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(af3_folder, tmp_path_factory):
    """(model, recipe, frozen, unmerged trained params on the host, per-step losses)."""
    folder = tmp_path_factory.mktemp("lora")
    lines = [{"prompt": f"Question {i}?", "answer": "yes" if i % 2 else "no, " * i} for i in range(4)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    model = models.load(af3_folder)
    recipe = recipe_of(folder)
    config = with_remat(model, recipe.remat)
    manifest = data.read_manifest(folder / "train.jsonl", model, buckets=(48,))
    batch = data.Batches(manifest, model, batch_size=4, grad_accum=2).load(np.arange(4))
    hp = Hyper(learning_rate=recipe.learning_rate, total_steps=recipe.steps)
    mesh = make_mesh(fsdp=2, tensor=2)
    host, specs, patterns, train = with_lora(model, config, recipe)
    with use_mesh(mesh):
        trainable, frozen = split_params(place_params(host, specs, mesh), patterns, train)
        tx = optimizer(hp)
        state = init_state(trainable, tx, 0)
        step = make_train_step(model.family, config, hp, tx, donate=False)
        losses = []
        for _ in range(recipe.steps):
            state, metrics = step(state, frozen, batch)
            losses.append(float(metrics["loss"]))
        adam = state.opt_state[1][0]
        assert jax.tree.structure(adam.mu) == jax.tree.structure(state.params)  # moments for adapters only
        q = state.params["decoder"]["layers"]["attn"]["q"]["lora_a"]
        assert "fsdp" in str(q.sharding.spec)  # the kernel's embed axis carried over
        params = host_copy(merge_params(state.params, frozen), mesh)
    return model, frozen, params, losses


def test_lora_trains_only_the_adapters(trained):
    model, frozen, params, losses = trained
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.9 * losses[0], losses
    paths = [p for p, _ in flatten_paths(params)]
    trained_paths = [p for p in paths if p.rsplit("/", 1)[1] in ("lora_a", "lora_b")]
    assert "decoder/layers/attn/k/lora_b" in trained_paths and "decoder/mlp/up/lora_a" not in paths
    assert not any(p.startswith(("encoder", "projector")) for p in trained_paths)
    base = dict(flatten_paths(model.params))
    for path, leaf in flatten_paths(frozen):
        if not path.endswith("lora_scale"):  # every base weight, bit for bit
            np.testing.assert_array_equal(np.asarray(leaf), base[path], err_msg=path)
    assert set(base) == {p for p, _ in flatten_paths(frozen)} - {p for p in paths if p.endswith("lora_scale")}


@functools.partial(jax.jit, static_argnums=1)
def logits(params, config, ids):
    return decoder.forward(params["decoder"], config.decoder, ids)[0].logits


def test_merged_export_equals_unmerged_forward(trained, tmp_path):
    model, _, params, _ = trained
    assert np.abs(params["decoder"]["layers"]["attn"]["v"]["lora_b"]).max() > 0  # B has moved off zero
    ids = np.arange(3, 3 + 2 * 12).reshape(2, 12) % model.config.decoder.vocab_size
    unmerged = np.asarray(logits(params, model.config, ids))
    merged = lora.merge(params)
    assert not any(p.rsplit("/", 1)[1].startswith("lora_") for p, _ in flatten_paths(merged))
    exported = models.load(write_final(model.path, merged, tmp_path / "final"))
    np.testing.assert_allclose(logits(exported.params, model.config, ids), unmerged, rtol=0, atol=1e-5)


def test_bad_lora_key_or_target_is_named(tmp_path, af3_folder):
    with pytest.raises(ValueError, match=r"unknown lora keys \['dropout'\]"):
        recipe_of(tmp_path, dropout=0.05)
    with pytest.raises(ValueError, match=r"lora.rank must be a positive integer"):
        recipe_of(tmp_path, rank=0)
    model = models.load(af3_folder)
    bad = recipe_of(tmp_path, targets=["*/attn/q", "*/attn/qq"])
    with pytest.raises(ValueError, match=r"lora.targets \['\*/attn/qq'\] match no linear module"):
        with_lora(model, model.config, bad)
