"""Opening checkpoint folders against a known CheckpointMap: every key and shape checked before a tensor is
read, and parameters loaded one at a time (placed in their shardings as they come)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from omni_jax import validation
from omni_jax.convert import checkpoint as ckpt
from omni_jax.convert import ctranslate2
from omni_jax.convert.keymap import ConversionError, Plan
from omni_jax.convert.parts import CheckpointMap, PartsConfig
from omni_jax.convert.sources import Source, open_source
from omni_jax.nn.params import ParamSpec, set_path
from omni_jax.sharding import RULES, Rules, named_sharding


def read_hf_config(folder: str | os.PathLike) -> dict:
    folder = validation.folder("checkpoint folder", folder)
    if ctranslate2.is_ctranslate2_dir(folder):
        return ctranslate2.hf_config(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(
            f"{folder}: no config.json; expected an HF checkpoint folder or an omni_jax conversion of one"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def read_generation_config(folder: str | os.PathLike) -> dict:
    """generation_config.json of a folder ({} when absent); derived for a CTranslate2 Whisper folder."""
    if ctranslate2.is_ctranslate2_dir(folder):
        return ctranslate2.generation_config(folder)
    path = Path(folder) / "generation_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def plan_hf(folder: Path, cmap: CheckpointMap, check: bool = True) -> tuple[PartsConfig, Source, Plan]:
    """Open an HF folder and map every key and shape to the model; with `check`, raise every problem."""
    source = open_source(folder)
    hf_config = read_hf_config(folder)
    present = cmap.present(source.tensors)
    if not source.tensors:  # nothing to map: the readers' reasons say why
        raise ConversionError(source.problems or [f"{folder}: no tensors in {', '.join(source.files)}"])
    problems = source.problems + cmap.missing_parts(present)
    if not present:
        raise ConversionError(problems)
    config = cmap.config(hf_config, present)
    plan = Plan(cmap.rules(config), cmap.specs(config), cmap.passthrough)
    for info in source.tensors.values():
        plan.add(info.key, info.shape, info.file)
    if check and (problems := problems + plan.check()):
        raise ConversionError(problems)
    return config, source, plan


def param_dtypes(plan: Plan, source: Source, dtype: Any = None) -> dict[str, np.dtype]:
    """Output dtype of each parameter: `dtype`, else that of its first source tensor."""
    if dtype is not None:
        return {path: ckpt.np_dtype(str(dtype)) for path in plan.specs}
    return {path: source.tensors[plan.pieces[path][0].key].dtype for path in plan.specs}


def open_jax(folder, cmap: CheckpointMap) -> tuple[PartsConfig, ckpt.JaxCheckpoint, dict]:
    """Our folder, its config and the specs by path; raises if the parameters do not fit them."""
    folder = Path(folder)
    checkpoint = ckpt.JaxCheckpoint(folder)
    config = cmap.config(read_hf_config(folder), checkpoint.manifest["parts"])
    specs = Plan(cmap.rules(config), cmap.specs(config)).specs
    have = checkpoint.params
    problems = [
        f"{folder}: parameter {p} is not in the {cmap.model_type} model" for p in have if p not in specs
    ]
    problems += [f"{folder}: missing parameter {p}" for p in specs if p not in have]
    problems += [
        f"{folder}: shape mismatch for {p}: expected {specs[p].shape}, got {shape}"
        for p, (shape, _) in have.items()
        if p in specs and tuple(specs[p].shape) != shape
    ]
    if problems:
        raise ConversionError(problems)
    return config, checkpoint, specs


def load_params(
    path, cmap: CheckpointMap, *, mesh: Mesh | None = None, rules: Rules | None = None, dtype: Any = None
) -> tuple[Any, dict]:
    """(config, params) of an omni_jax folder, or of an HF folder converted on the fly. With a mesh, every
    array is placed in the sharding its logical axes get under `rules` (default `omni_jax.sharding.RULES`),
    and from an omni_jax folder each device reads only its slice. `dtype` casts every parameter."""
    path, dtype = validation.folder("checkpoint folder", path), validation.float_dtype("dtype", dtype)
    if (path / ckpt.MANIFEST).is_file():
        config, checkpoint, specs = open_jax(path, cmap)
        shardings = {p: _sharding(specs[p], mesh, rules) for p in checkpoint.params}
        return cmap.unwrap(config), checkpoint.load(shardings, dtype)
    config, source, plan = plan_hf(path, cmap)
    dtypes = param_dtypes(plan, source, dtype)
    params: dict = {}
    for p, spec in plan.specs.items():
        array = validation.finite_array(f"{path}: parameter {p}", plan.build(p, source.read, dtypes[p]))
        set_path(params, p, jax.device_put(array, _sharding(spec, mesh, rules)))
    return cmap.unwrap(config), params


def _sharding(spec: ParamSpec, mesh: Mesh | None, rules: Rules | None) -> jax.sharding.Sharding:
    if mesh is None:
        return SingleDeviceSharding(jax.devices()[0])
    return named_sharding(mesh, spec.axes, spec.shape, RULES if rules is None else rules)
