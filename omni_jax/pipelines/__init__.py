"""Per-family pipelines behind the CLIs (`python -m omni_jax.generate`, `python -m omni_jax.parity`).

`load_pipeline(path)` reads the folder's config.json and loads the pipeline of its `model_type`. Each family
module defines `load(path, *, dtype=None) -> Pipeline` (with `prepare`, `generate`, `stream`, `decode`) and
`parity_stages(hf_dir, audios, prompts, *, max_new_tokens) -> list[omni_jax.parity.Report]`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from omni_jax.parity import Report

FAMILIES = {
    "audioflamingo3": "omni_jax.pipelines.audioflamingo3",
    "qwen3_omni_moe": "omni_jax.pipelines.qwen3_omni",
    "qwen3_omni_moe_thinker": "omni_jax.pipelines.qwen3_omni",
}


def family_module(path: str | Path) -> ModuleType:
    """The pipeline module of a checkpoint folder (HF or converted), by its config.json `model_type`."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise ValueError(
            f"{path}: no config.json; expected an HF checkpoint folder or an omni_jax conversion of one"
        )
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"{config}: model_type {model_type!r} has no pipeline; supported: {', '.join(sorted(FAMILIES))}"
        )
    return importlib.import_module(FAMILIES[model_type])


def exact_report(name: str, same: bool, shape) -> Report:
    """A parity report for values that must be equal (ids, masks, greedy tokens): difference 0 or inf."""
    diff = 0.0 if same else float("inf")
    return Report(name, diff, diff, tuple(shape), tuple(shape), 0.0)


def load_pipeline(path: str | Path, **kwargs: Any):
    """The Pipeline of a checkpoint folder; kwargs go to the family's `load` (e.g. dtype)."""
    return family_module(path).load(path, **kwargs)
