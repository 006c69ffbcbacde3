"""One abstract description per parameter, from which init, sharding and conversion targets derive."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """Shape, logical axes, initializer and dtype of one parameter array."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: str = "normal"  # normal | zeros | ones | constant
    scale: float = 0.02  # stddev for "normal", value for "constant"
    dtype: str = "float32"

    def __post_init__(self):
        if len(self.shape) != len(self.axes):
            raise ValueError(f"ParamSpec shape {self.shape} and axes {self.axes} differ in rank")
        if self.init not in _INITIALIZERS:
            raise ValueError(f"unknown initializer {self.init!r}; known: {sorted(_INITIALIZERS)}")


def is_spec(x: Any) -> bool:
    return isinstance(x, ParamSpec)


def map_specs(fn: Callable[[ParamSpec], Any], specs: Any) -> Any:
    """tree_map over a nested dict whose leaves are ParamSpec."""
    return jax.tree.map(fn, specs, is_leaf=is_spec)


def stacked(specs: Any, n: int, axis: str | None = "layers") -> Any:
    """Prepend a stacking dimension of size n (layers, experts) to every spec."""
    return map_specs(lambda s: dataclasses.replace(s, shape=(n, *s.shape), axes=(axis, *s.axes)), specs)


def unstack(tree) -> tuple:
    """A stacked tree (every leaf with a leading layer axis) as a tuple of per-layer trees."""
    n = jax.tree.leaves(tree)[0].shape[0]
    return tuple(jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n))


def _normal(key, spec, dtype):
    return spec.scale * jax.random.normal(key, spec.shape, dtype)


_INITIALIZERS: dict[str, Callable] = {
    "normal": _normal,
    "zeros": lambda key, spec, dtype: jnp.zeros(spec.shape, dtype),
    "ones": lambda key, spec, dtype: jnp.ones(spec.shape, dtype),
    "constant": lambda key, spec, dtype: jnp.full(spec.shape, spec.scale, dtype),
}


def init_params(specs: Any, key: jax.Array, dtype: Any = None) -> Any:
    """Random parameters for a spec tree; `dtype` overrides every spec's dtype."""
    leaves, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
    keys = jax.random.split(key, max(len(leaves), 1))
    arrays = [
        _INITIALIZERS[s.init](k, s, jnp.dtype(dtype or s.dtype)) for k, s in zip(keys, leaves, strict=False)
    ]
    return jax.tree.unflatten(treedef, arrays)


def abstract_params(specs: Any, dtype: Any = None) -> Any:
    """jax.ShapeDtypeStruct tree (restore / conversion target) for a spec tree."""
    return map_specs(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype or s.dtype)), specs)


def logical_axes(specs: Any) -> Any:
    """Tree of logical axis-name tuples, the input of sharding rules."""
    return map_specs(lambda s: s.axes, specs)


def check_params(specs: Any, params: Any) -> list[str]:
    """Every shape mismatch and missing/extra leaf between a spec tree and a param tree, as messages."""
    want = dict(flatten_paths(map_specs(lambda s: s.shape, specs), is_leaf=lambda x: isinstance(x, tuple)))
    have = {p: tuple(np.shape(a)) for p, a in flatten_paths(params)}
    errors = [f"missing parameter {p} {want[p]}" for p in sorted(want.keys() - have.keys())]
    errors += [f"unexpected parameter {p} {have[p]}" for p in sorted(have.keys() - want.keys())]
    errors += [
        f"shape mismatch at {p}: expected {want[p]}, got {have[p]}"
        for p in sorted(want.keys() & have.keys())
        if want[p] != have[p]
    ]
    return errors


def flatten_paths(tree: Any, is_leaf: Callable | None = None) -> list[tuple[str, Any]]:
    """[('a/b/c', leaf), ...] for a nested dict tree."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in flat]


def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def set_path(tree: dict, path: str, value: Any) -> None:
    """Set tree['a']['b']['c'] = value for path 'a/b/c', creating dicts as needed."""
    *parents, last = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[last] = value
