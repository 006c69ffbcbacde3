"""Manifest parsing, label masking, per-process slices, recipes and checkpoint fingerprints: host-side, no
compilation."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.train import data, models
from omni_jax.train.checkpoint import Checkpoints, fingerprint
from omni_jax.train.loss import keep_label_window
from omni_jax.train.recipe import Recipe
from tests.train.conftest import write_clips


@pytest.fixture(scope="module")
def af3(af3_folder):
    return models.load(af3_folder)


def write_manifest(folder, lines, name="train.jsonl"):
    (folder / name).write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    )
    return folder / name


def test_labels_cover_only_the_answer_and_end_of_turn(af3, tmp_path):
    names = write_clips(tmp_path, (1.0, 0.6))
    path = write_manifest(tmp_path, [
        {"audio": names[0], "prompt": "What is it?", "answer": "a tone"},
        {"messages": [{"role": "user", "content": [{"type": "audio", "path": names[1]},
                                                   {"type": "text", "text": "And this?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "hum"}]}]},
    ])  # fmt: skip
    manifest = data.read_manifest(path, af3, buckets=(64, 128))
    batch = data.Batches(manifest, af3, batch_size=2, shuffle=False).load(np.arange(2))
    tok = af3.processor.tokenizer
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    ids = ids[:, ids.shape[1] - labels.shape[1] :]  # the label window: the rows' last columns
    for row, answer in zip(range(2), ("a tone", "hum"), strict=True):
        kept = ids[row][labels[row] != -100].tolist()
        assert kept == tok.encode(answer, False) + [tok.token_id("<|im_end|>")]
    assert not (labels[ids == af3.processor.audio_token_id] != -100).any()  # placeholders never train
    assert batch["input_features"].shape == (1, 2, 128, 3000) and batch["audio_valid"][0].any(-1).all()
    assert max(e.tokens for e in manifest.examples) >= batch["attention_mask"][0].sum(-1).max()


def test_label_window_holds_every_target(af3, tmp_path):
    """Labels keep only the bucketed window of last columns that predicts answer tokens (the lm_head runs
    there), sized from the whole global batch; every target of the full rows is in it."""
    lines = [{"prompt": "Say " + "a word " * 30, "answer": "x" * (3 * i + 1)} for i in range(4)]
    manifest = data.read_manifest(write_manifest(tmp_path, lines), af3, buckets=(16, 32, 128))
    batch = data.Batches(manifest, af3, batch_size=4, shuffle=False).load(np.arange(4))
    assert batch["input_ids"].shape[-1] == 128 and batch["labels"].shape[-1] == 16
    full = [data.process(af3, e)["labels"] for e in manifest.examples]
    assert (batch["labels"] != -100).sum() == sum((f != -100).sum() for f in full)
    halves = [
        data.Batches(manifest, af3, batch_size=4, process_index=p, process_count=2, shuffle=False)
        for p in range(2)
    ]  # each process sizes the window from the global batch, so the slices agree
    assert {h.load(np.arange(4))["labels"].shape[-1] for h in halves} == {16}
    labels = np.full((1, 10), -100)
    labels[0, 6:] = 1
    assert keep_label_window(labels, 5).shape == (1, 5)
    with pytest.raises(ValueError, match="drops targets"):
        keep_label_window(labels, 4)


def test_process_slices_make_the_global_batch(af3, tmp_path):
    lines = [{"prompt": f"Say {i}", "answer": "x" * (i + 1)} for i in range(8)]
    manifest = data.read_manifest(write_manifest(tmp_path, lines), af3, buckets=(48,))
    whole = data.Batches(manifest, af3, batch_size=8, grad_accum=2).load(np.arange(8)[::-1])
    parts = [
        data.Batches(manifest, af3, batch_size=8, grad_accum=2, process_index=p, process_count=2).load(
            np.arange(8)[::-1]
        )
        for p in range(2)
    ]
    for key, value in whole.items():
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts], axis=1), value)
    it = data.Batches(manifest, af3, batch_size=4).iterator()
    first = [next(it)["input_ids"] for _ in range(3)]
    resumed = data.Batches(manifest, af3, batch_size=4).iterator({"next_index": 2})
    np.testing.assert_array_equal(next(resumed)["input_ids"], first[2])


def test_thinker_batches_put_clips_in_slots(thinker_folder, tmp_path):
    model = models.load(thinker_folder)
    names = write_clips(tmp_path, (1.3, 0.5, 0.7))
    path = write_manifest(tmp_path, [
        {"audio": names[:2], "prompt": "Both?", "answer": "two tones"},
        {"audio": names[2], "prompt": "One?", "answer": "one"},
    ])  # fmt: skip
    manifest = data.read_manifest(path, model, buckets=(128,))
    assert manifest.audio_slots == 2
    batch = data.Batches(manifest, model, batch_size=2, shuffle=False).load(np.arange(2))
    assert batch["audio_present"][0].tolist() == [True, True, True, False]
    assert batch["positions"].shape == (1, 2, 3, 128)
    tok = model.processor.tokenizer
    labelled = [len(tok.encode(a, False)) + 1 for a in ("two tones", "one")]
    assert (batch["labels"][0] != -100).sum(-1).tolist() == labelled
    sums = jax.jit(models.thinker_sums, static_argnums=1)
    nll, n, aux = sums(model.params, model.config, {k: jnp.asarray(v[0]) for k, v in batch.items()})
    assert int(n) == sum(labelled) and np.isfinite(float(nll)) and float(aux) > 0


@pytest.mark.parametrize(
    "line, message",
    [
        ({"audio": "clip0.wav", "prompt": "hi"}, "line 2: missing or non-string 'answer'"),
        ({"audio": "nope.wav", "prompt": "hi", "answer": "x"}, "line 2: audio file not found"),
        ({"audio": "clip0.wav", "prompt": "hi " * 200, "answer": "x"}, "line 2: 6"),
        ("{not json", "line 2: not valid JSON"),
        (
            {"audio": "clip0.wav", "prompt": "hi", "answer": "x", "lang": "en"},
            "line 2: unknown keys ['lang']",
        ),
        ({"prompt": "hi", "answer": "x"}, "line 2: no audio, but other lines have some"),
    ],
)
def test_bad_manifest_lines_are_named(af3, tmp_path, line, message):
    write_clips(tmp_path, (0.5,))
    path = write_manifest(tmp_path, [{"audio": "clip0.wav", "prompt": "ok", "answer": "y"}, line])
    with pytest.raises(
        ValueError, match="exceed the largest length bucket" if message.endswith("6") else None
    ) as e:
        data.read_manifest(path, af3, buckets=(128,))
    assert f"{path} {message}" in str(e.value)


def test_all_masked_batch_is_refused():
    with pytest.raises(ValueError, match="step 3: every label of the batch is -100"):
        data.check_targets({"labels": np.full((1, 2, 8), -100)}, "step 3")


def test_recipe_keys_are_checked(tmp_path):
    base = {"model": "m", "train_data": "t.jsonl", "output_dir": "o", "steps": 2, "batch_size": 2,
            "learning_rate": 1e-3}  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(base | {"lerning_rate": 1}))
    with pytest.raises(ValueError, match=r"unknown keys \['lerning_rate'\]"):
        Recipe.load(tmp_path / "r.json")
    (tmp_path / "r.json").write_text(json.dumps(base))
    recipe = Recipe.load(tmp_path / "r.json", ["steps=5", "mesh.fsdp=2", 'freeze=["encoder"]'])
    assert recipe.steps == 5 and recipe.mesh_shape == {"fsdp": 2} and recipe.freeze == ("encoder",)
    assert recipe.output_dir == str(tmp_path / "o")
    with pytest.raises(ValueError, match="batch_size 5 is not a multiple of grad_accum 2"):
        Recipe.load(tmp_path / "r.json", ["batch_size=5", "grad_accum=2"])


def test_checkpoint_of_another_config_is_refused(tmp_path):
    state = {"decoder": {"lm_head": {"kernel": jnp.zeros((4, 8))}}}
    saver = Checkpoints(
        tmp_path, every=1, keep=2, fingerprint=fingerprint({"model_type": "audioflamingo3"}, state)
    )
    saver.save(1, state, {"iterator": {"next_index": 1}})
    saver.close()
    other = {"decoder": {"lm_head": {"kernel": jnp.zeros((4, 16))}}}
    loader = Checkpoints(
        tmp_path, every=1, keep=2, fingerprint=fingerprint({"model_type": "audioflamingo3"}, other)
    )
    with pytest.raises(ValueError, match=r"decoder/lm_head/kernel: checkpoint \[4, 8\] vs model \[4, 16\]"):
        loader.restore_latest(other)
    step, restored, saved = Checkpoints(
        tmp_path, every=1, keep=2, fingerprint=saver.fingerprint
    ).restore_latest(state)
    assert step == 1 and saved["iterator"] == {"next_index": 1}


def test_shipped_recipes_parse():
    recipes = sorted((Path(__file__).resolve().parents[2] / "train").glob("*.json"))
    assert len(recipes) >= 4
    for path in recipes:
        Recipe.load(path)
