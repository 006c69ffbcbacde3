"""load_pretrained: parameters of an omni_jax folder, or of an HF folder converted on the fly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh, SingleDeviceSharding

from omni_jax.convert import checkpoint as ckpt
from omni_jax.convert import pipeline
from omni_jax.nn.params import ParamSpec, set_path
from omni_jax.sharding import RULES, Rules, named_sharding


def load_pretrained(path, *, mesh: Mesh | None = None, rules: Rules | None = None, dtype: Any = None):
    """(config, params) of a checkpoint folder. With a mesh, every array is placed in the sharding its logical
    axes get under `rules` (default `omni_jax.sharding.RULES`), and from an omni_jax folder each device reads
    only its slice. `dtype` casts every parameter."""
    path = Path(path)
    if (path / ckpt.MANIFEST).is_file():
        family, config, checkpoint, specs = pipeline.open_jax(path)
        shardings = {p: _sharding(specs[p], mesh, rules) for p in checkpoint.params}
        return family.unwrap(config), checkpoint.load(shardings, dtype)
    family, config, source, plan = pipeline.plan_hf(path)
    dtypes = pipeline.param_dtypes(plan, source, dtype)
    params: dict = {}
    for p, spec in plan.specs.items():
        set_path(
            params, p, jax.device_put(plan.build(p, source.read, dtypes[p]), _sharding(spec, mesh, rules))
        )
    return family.unwrap(config), params


def _sharding(spec: ParamSpec, mesh: Mesh | None, rules: Rules | None) -> jax.sharding.Sharding:
    if mesh is None:
        return SingleDeviceSharding(jax.devices()[0])
    return named_sharding(mesh, spec.axes, spec.shape, RULES if rules is None else rules)
