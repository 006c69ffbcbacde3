"""The CLIs on a tiny random AudioFlamingo3 checkpoint: `python -m omni_jax.generate` (HF and converted
folders, streaming, batches, --json) and `python -m omni_jax.parity` (table, exit status); their errors."""

import json
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from omni_jax.cli import generate
from omni_jax.cli import parity as parity_cli
from omni_jax.cli.convert import main as convert_main
from omni_jax.demo import tiny_checkpoint
from omni_jax.families.audioflamingo3 import pipeline as af3_pipeline

pytest.importorskip("transformers")

SPEECH = str(resources.files("omni_jax") / "assets" / "speech.wav")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(HF folder, its conversion by `python -m omni_jax.convert to-jax`)."""
    root = tmp_path_factory.mktemp("cli")
    hf = tiny_checkpoint(root / "hf")
    assert convert_main(["to-jax", str(hf), str(root / "jax"), "--quiet"]) == 0
    return hf, root / "jax"


def run_json(capsys, *argv) -> dict:
    assert generate.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_json_is_the_same_from_hf_and_converted_folders(folders, capsys):
    hf, converted = (
        run_json(capsys, "--model", str(f), "--audio", SPEECH, "--max-new-tokens", "5") for f in folders
    )
    assert np.shape(hf["ids"]) == (1, 5) and hf["ids"] == converted["ids"] and hf["text"] == converted["text"]
    assert set(hf["timings"]) >= {"load_s", "prepare_s", "first_token_s", "generate_s", "tokens_per_s"}
    assert 0 < hf["timings"]["first_token_s"] <= hf["timings"]["generate_s"]


def test_generate_streams_one_clip_and_labels_a_batch(folders, capsys):
    argv = [
        "--model",
        str(folders[1]),
        "--audio",
        SPEECH,
        "--max-new-tokens",
        "5",
        "--prompt",
        "What is said?",
    ]
    expected = run_json(capsys, *argv)["text"][0]
    assert generate.main(argv) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert generate.main([*argv, "--audio", SPEECH]) == 0
    assert capsys.readouterr().out.splitlines() == [f"[0] {expected}", f"[1] {expected}"]


def test_parity_table_passes_and_a_perturbed_model_fails(folders, capsys, monkeypatch):
    argv = ["--model", str(folders[0]), "--audio", SPEECH, "--max-new-tokens", "8"]
    assert parity_cli.main(argv) == 0
    out = capsys.readouterr().out
    for stage in ("prompt ids", "features", "encoder", "projector", "prefill logits", "greedy tokens (8 new"):
        assert stage in out
    assert "all stages within tolerance" in out

    load = af3_pipeline.load

    def perturbed(path, **kw):
        pipe = load(path, **kw)
        pipe.params["projector"]["linear_2"]["bias"] = pipe.params["projector"]["linear_2"]["bias"] + 0.01
        return pipe

    monkeypatch.setattr(af3_pipeline, "load", perturbed)
    assert parity_cli.main(argv) == 1
    assert "FAIL (projector" in capsys.readouterr().out


def test_clear_errors(folders, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert generate.main(["--model", str(tmp_path), "--audio", SPEECH]) == 2
    assert "unsupported model_type 'bert'" in capsys.readouterr().err
    assert generate.main(["--model", str(folders[1]), "--audio", str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav" in capsys.readouterr().err
    assert parity_cli.main(["--model", str(folders[1]), "--audio", SPEECH]) == 2  # not an HF folder
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["omni_jax.generate", "omni_jax.parity"])
def test_entry_points(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
    assert "--model" in out.stdout and "--audio" in out.stdout
