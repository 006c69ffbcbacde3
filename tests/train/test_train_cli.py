"""`python -m omni_jax.train` end to end on the tiny AF3 (text-only synthetic task, float32 CPU): the loss
falls >= 10x; SIGKILL in the middle of an asynchronous save and right after a checkpoint, then --resume,
reproduces the uninterrupted losses exactly; 2 processes x 4 devices equal 1 process x 8 devices; the
final export converts to an HF folder that transformers loads."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from omni_jax.cli import convert as convert_cli
from omni_jax.cli import train as train_cli
from omni_jax.train.metrics import read_metrics
from tests.conftest import FAST_COMPILE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def task(tmp_path_factory, af3_folder):
    """A synthetic task (answer "ok" to every prompt) and a recipe writer; one compilation cache."""
    folder = tmp_path_factory.mktemp("task")
    lines = [{"prompt": f"Say ok, number {i}", "answer": "ok"} for i in range(8)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    cache = tmp_path_factory.mktemp("jax-cache")

    def recipe(name, **overrides):
        body = {
            "model": str(af3_folder), "train_data": "train.jsonl", "eval_data": "train.jsonl",
            "output_dir": name, "steps": 8, "batch_size": 8, "learning_rate": 6e-2, "warmup_steps": 0,
            "checkpoint_every": 2, "keep_checkpoints": 2, "freeze": ["decoder/embed"], "length_buckets": [40],
            "seed": 3,
        } | overrides  # fmt: skip
        (folder / f"{name}.json").write_text(json.dumps(body))
        return folder / f"{name}.json"

    return folder, recipe, cache


def launch(recipe, cache, devices, *extra):
    env = os.environ | {
        "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
        "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }  # fmt: skip
    cmd = [sys.executable, "-m", "omni_jax.train", "--config", str(recipe), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def kill_when(proc, ready, timeout=600):
    """SIGKILL `proc` as soon as ready() holds (polled every 2 ms)."""
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < end
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def losses(folder):
    return [r["loss"] for r in read_metrics(folder / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(task):
    folder, recipe, cache = task
    finish(launch(recipe("ref", mesh={"data": 1}), cache, 1))
    return folder / "ref"


def test_loss_falls_and_outputs_are_written(reference, af3_folder, tmp_path):
    records = read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert {"loss", "lr", "grad_norm", "tokens", "eval_loss"} <= set(records[-1])
    assert records[-1]["eval_loss"] * 10 <= records[0]["loss"], [r["loss"] for r in records]
    assert (reference / "loss.png").stat().st_size > 1000
    assert any(p.name.startswith("events.out.tfevents") for p in (reference / "tensorboard").iterdir())
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["6", "8"]  # keep 2
    hf = tmp_path / "hf"
    assert convert_cli.main(["to-hf", str(reference / "final"), str(hf), "--quiet"]) == 0  # in-process
    import transformers
    from safetensors.numpy import load_file

    model = transformers.AudioFlamingo3ForConditionalGeneration.from_pretrained(hf)
    trained = model.lm_head.weight.detach().numpy()
    base = load_file(str(af3_folder / "model.safetensors"))
    frozen = [k for k in base if k.endswith("embed_tokens.weight")][0]
    np.testing.assert_array_equal(
        model.model.language_model.embed_tokens.weight.detach().numpy(), base[frozen]
    )
    assert not np.array_equal(trained, base[[k for k in base if k.endswith("lm_head.weight")][0]])


def test_sigkill_during_save_and_after_checkpoint_then_resume_is_exact(task, reference, capsys):
    folder, recipe, cache = task
    path = recipe("killed", mesh={"data": 1})
    ckpts = folder / "killed" / "checkpoints"
    proc = launch(path, cache, 1)
    kill_when(proc, lambda: (ckpts / "2").is_dir() and (ckpts / "4.orbax-checkpoint-tmp").exists())
    assert not (ckpts / "4").exists()  # killed mid-save: step 4 never completed
    proc = launch(path, cache, 1, "--resume")
    kill_when(proc, lambda: (ckpts / "6").is_dir())
    finish(launch(path, cache, 1, "--resume"))
    assert losses(folder / "killed") == losses(reference)  # bit-exact, metrics appended without repeats
    assert train_cli.main(["--config", str(path)]) == 1  # in-process: refused before any compilation
    assert "holds checkpoints: pass --resume" in capsys.readouterr().err


def test_two_processes_equal_one_process(task):
    folder, recipe, cache = task
    path = recipe("multi", steps=2, mesh={"data": 8}, eval_data=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        launch(
            path,
            cache,
            4,
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(i),
        )
        for i in range(2)
    ]
    for p in procs:
        finish(p)
    two = losses(folder / "multi")
    finish(launch(recipe("one", steps=2, mesh={"data": 8}, eval_data=None), cache, 8))
    np.testing.assert_allclose(two, losses(folder / "one"), rtol=1e-6, atol=0)  # 1 float32 ulp apart
    assert len(two) == 2


def test_thinker_lora_run_exports_merged_weights(thinker_folder, tmp_path, task):
    """The tiny Qwen3-Omni Thinker (MoE, router aux loss, one or two clips an example) through the CLI with
    LoRA on its attention: the run ends, its final/ holds merged attention kernels and untouched others."""
    from omni_jax.train import models
    from tests.train.conftest import write_clips

    names = write_clips(tmp_path, (0.6, 0.4))
    lines = [
        {"audio": names, "prompt": "Two tones?", "answer": "yes"},
        {"audio": names[1], "prompt": "One?", "answer": "one"},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    recipe = {
        "model": str(thinker_folder), "train_data": "train.jsonl", "output_dir": "run", "steps": 2,
        "batch_size": 2, "learning_rate": 1e-2, "checkpoint_every": 2, "freeze": ["audio_encoder"],
        "length_buckets": [128], "mesh": {"data": 1},
        "lora": {"rank": 2, "alpha": 4, "targets": ["thinker/layers/attn/*"]},
    }  # fmt: skip
    (tmp_path / "thinker.json").write_text(json.dumps(recipe))
    finish(launch(tmp_path / "thinker.json", task[2], 1))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    base = models.load(thinker_folder).params["thinker"]
    final = models.load(tmp_path / "run" / "final").params["thinker"]
    assert not np.array_equal(final["layers"]["attn"]["o"]["kernel"], base["layers"]["attn"]["o"]["kernel"])
    np.testing.assert_array_equal(final["embed"]["embedding"], base["embed"]["embedding"])
    np.testing.assert_array_equal(final["layers"]["post_norm"]["scale"], base["layers"]["post_norm"]["scale"])
