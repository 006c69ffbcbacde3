"""load_pretrained: parameters of an omni_jax folder, or of an HF folder converted on the fly."""

from __future__ import annotations

from typing import Any

from jax.sharding import Mesh

from omni_jax.convert.plan import load_params
from omni_jax.families.registry import checkpoint_map
from omni_jax.sharding import Rules


def load_pretrained(path, *, mesh: Mesh | None = None, rules: Rules | None = None, dtype: Any = None):
    """(config, params) of a checkpoint folder of any registered model_type. With a mesh, every array is
    placed in the sharding its logical axes get under `rules` (default `omni_jax.sharding.RULES`), and from
    an omni_jax folder each device reads only its slice. `dtype` casts every parameter."""
    return load_params(path, checkpoint_map(path), mesh=mesh, rules=rules, dtype=dtype)
