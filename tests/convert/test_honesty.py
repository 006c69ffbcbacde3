"""The converter and loader never hide a problem nor leave debris: reader errors named by file and reason,
required parts enforced, NaN weights and integer dtypes refused, SIGKILL / SIGTERM mid-write cleaned up,
umask permissions. On the tiny AudioFlamingo3 checkpoint (built once under .cache/)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import omni_jax
from omni_jax.cli.convert import main
from omni_jax.convert import checkpoint as ckpt
from omni_jax.convert import run as convert
from omni_jax.convert.keymap import ConversionError
from omni_jax.testing.checkpoints import ROOT, cached_tiny_checkpoint

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def hf():
    return cached_tiny_checkpoint()


def variant(hf: Path, folder: Path, state=None, weights: bytes | None = None, name="model.safetensors"):
    """A copy of the side files of `hf` with other weights: a state dict, or raw bytes in `name`."""
    folder.mkdir()
    for f in hf.iterdir():
        if f.suffix != ".safetensors":
            shutil.copyfile(f, folder / f.name)
    if state is not None:
        save_file(state, folder / name, metadata={"format": "pt"})
    else:
        (folder / name).write_bytes(weights)
    return folder


def problems(folder: Path) -> str:
    with pytest.raises(ConversionError) as e:
        convert.to_jax(folder, folder.parent / "out")
    assert not (folder.parent / "out").exists()
    assert not list(folder.parent.glob(".out.*")), "debris"
    return str(e.value)


def state(hf: Path, drop: str = "", **replace) -> dict:
    s = {k: v for k, v in load_file(hf / "model.safetensors").items() if not (drop and k.startswith(drop))}
    return s | replace


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda hf, d: variant(hf, d, weights=(hf / "model.safetensors").read_bytes()[:-999]),
         "model.safetensors: truncated or corrupt"),
        (lambda hf, d: variant(hf, d, weights=b"\x09\x00\x00\x00\x00\x00\x00\x00{not json"),
         "model.safetensors: corrupt safetensors header"),
        (lambda hf, d: variant(hf, d, weights=os.urandom(4096), name="pytorch_model.bin"),
         "pytorch_model.bin: cannot read"),
        (lambda hf, d: variant(hf, d, state(hf, drop="audio_tower.")),
         "missing required part 'encoder': no key starts with 'audio_tower.' or 'model.audio_tower.'"),
        (lambda hf, d: variant(hf, d, state(hf, drop="multi_modal_projector.")),
         "missing required part 'projector'"),
    ],
)  # fmt: skip
def test_reader_errors_and_missing_parts_are_named(hf, tmp_path, make, words):
    folder = make(hf, tmp_path / "bad")
    assert words in problems(folder)
    assert main(["inspect", str(folder)]) == 1


def test_inspect_exits_1_on_problems_and_names_optional_parts(hf, tmp_path, capsys):
    assert main(["inspect", str(hf)]) == 0
    assert "PROBLEM" not in capsys.readouterr().out
    folder = variant(hf, tmp_path / "bad", state(hf, drop="audio_tower."))
    assert main(["inspect", str(folder)]) == 1
    captured = capsys.readouterr()
    assert "PROBLEM: missing required part 'encoder'" in captured.out and "1 problem(s)" in captured.err


@pytest.mark.parametrize(
    "config, words",
    [
        ("{not json", "config.json: corrupt"),
        ("[1, 2]", "expected a JSON object, got list"),
        (None, "no config.json"),
    ],
)
def test_bad_config_files(hf, tmp_path, config, words):
    folder = variant(hf, tmp_path / "bad", weights=(hf / "model.safetensors").read_bytes())
    if config is None:
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text(config)
    with pytest.raises(ValueError, match=words):
        omni_jax.load_pretrained(folder)


def test_usage_errors_exit_2_before_reading(hf, tmp_path, capsys):
    assert main(["to-jax", str(tmp_path / "absent"), str(tmp_path / "out")]) == 2
    assert "source folder: " in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    assert main(["to-jax", str(hf), str(tmp_path / "out")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_load_refuses_integer_dtype_and_nan_weights_and_expands_home(hf, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        omni_jax.load_pretrained(hf, dtype="int8")
    key = "language_model.model.layers.0.mlp.up_proj.weight"
    weights = state(hf)
    nan = weights[key].copy()
    nan[0, 0] = np.nan
    folder = variant(hf, tmp_path / "nan", weights | {key: nan})
    with pytest.raises(ValueError, match=r"parameter decoder/mlp/up/kernel contains NaN or inf"):
        omni_jax.load_pretrained(folder)
    convert.to_jax(folder, tmp_path / "nan_jax")  # conversion keeps the bytes; loading refuses them
    with pytest.raises(ValueError, match=r"nan_jax: parameter decoder/mlp/up/kernel contains NaN"):
        omni_jax.load_pretrained(tmp_path / "nan_jax")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").symlink_to(hf)
    config, _ = omni_jax.load_pretrained("~/ckpt")
    assert config["decoder"].vocab_size == 151672


def test_outputs_get_umask_permissions(hf, tmp_path):
    old = os.umask(0o022)
    try:
        convert.to_jax(hf, tmp_path / "jax")
        convert.to_hf(tmp_path / "jax", tmp_path / "hf")
        omni_jax.audio.save_audio(tmp_path / "a.wav", np.zeros(160, np.float32), 16000)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}, files


# ---------------------------------------------------------------- killed conversions

SLOW = (
    "import sys, time; from omni_jax.convert import checkpoint as c; w = c.SafetensorsWriter.write\n"
    "def slow(self, *a):\n    time.sleep(0.2); return w(self, *a)\n"
    "c.SafetensorsWriter.write = slow\n"
    "from omni_jax.cli.convert import main; sys.exit(main(sys.argv[1:]))"
)


def start_and_signal(hf: Path, dst: Path, signum: int) -> int:
    """Start a slowed conversion, send `signum` once its params file is being written; -> exit status."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    argv = [sys.executable, "-c", SLOW, "to-jax", str(hf), str(dst), "--quiet", "--overwrite"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env)
    deadline = time.time() + 120
    while not list(dst.parent.glob(f".{dst.name}.partial-*/params.safetensors")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signum)
    return proc.wait()


def complete(dst: Path) -> bool:
    return (dst / ckpt.MANIFEST).is_file() and (dst / "params.safetensors").is_file()


def test_sigterm_cleans_up_and_sigkill_debris_goes_with_the_next_run(hf, tmp_path):
    dst = tmp_path / "jax"
    assert start_and_signal(hf, dst, signal.SIGTERM) == 130  # handled like Ctrl-C
    assert not dst.exists() and not list(tmp_path.glob(".jax.*")), "SIGTERM left debris"

    assert start_and_signal(hf, dst, signal.SIGKILL) == -signal.SIGKILL
    assert not dst.exists() and list(tmp_path.glob(".jax.partial-*")), "not interrupted mid-write"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".jax.partial-{live.pid}").mkdir()  # a live conversion's: never touched
        convert.to_jax(hf, dst)
        assert complete(dst)
        assert [p.name for p in tmp_path.glob(".jax.*")] == [f".jax.partial-{live.pid}"]
    finally:
        live.kill()
        live.wait()
        (tmp_path / f".jax.partial-{live.pid}").rmdir()

    # killed with --overwrite between its two renames: the old complete folder comes back
    (tmp_path / ".jax.partial-999999999").mkdir()
    dst.rename(tmp_path / ".jax.old-999999999")
    assert ckpt.clean_stale(dst) == [tmp_path / ".jax.partial-999999999"]
    assert complete(dst)
    assert json.loads((dst / ckpt.MANIFEST).read_text())["model_type"] == "audioflamingo3"
