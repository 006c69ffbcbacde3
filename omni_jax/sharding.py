"""Logical-axis sharding: parameters and activations name their axes ("embed", "heads", "batch", ...); one
rules table maps those names onto a mesh with axes (data, fsdp, tensor, expert).

    mesh = make_mesh(data=2, tensor=4)
    params = shard_params(params, mesh, RULES, axes=logical_axes(param_specs(config)))
    with use_mesh(mesh):             # activations at block boundaries get constrained too
        out = prefill(params, config, ids, cache)

A mesh axis that does not divide an array dimension is dropped for that array (it stays replicated along
it). A rule set that maps two dimensions of one array onto the same mesh axis is rejected.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "expert")

Rules = tuple[tuple[str, tuple[str, ...]], ...]

# logical axis -> mesh axes; unlisted names (layers, length, cache_length, head_dim, act_embed) are replicated
RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", ("fsdp",)),
    ("vocab", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("mlp", ("tensor",)),
    ("expert", ("expert",)),
    ("act_heads", ("tensor",)),
    ("act_vocab", ("tensor",)),
)

_CONTEXT: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "omni_jax_mesh", default=None
)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, expert: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor, expert) mesh over the first data*fsdp*tensor*expert devices."""
    shape = (data, fsdp, tensor, expert)
    devices = jax.devices() if devices is None else devices
    n = int(np.prod(shape))
    if n > len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {n} devices, have {len(devices)}"
        )
    return Mesh(np.asarray(devices[:n]).reshape(shape), MESH_AXES)


def check_rules(rules: Rules) -> None:
    names = [name for name, _ in rules]
    dup = sorted({n for n in names if names.count(n) > 1})
    unknown = sorted({a for _, axes in rules for a in axes} - set(MESH_AXES))
    if dup or unknown:
        raise ValueError(f"bad sharding rules: duplicate logical axes {dup}, unknown mesh axes {unknown}")


def logical_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = RULES
) -> PartitionSpec:
    """PartitionSpec of an array with logical `axes` and `shape` on `mesh`. Raises on a collision (two
    dimensions onto one mesh axis); drops mesh axes that do not divide their dimension."""
    table = dict(rules)
    used: dict[str, str] = {}
    spec = []
    for name, size in zip(axes, shape, strict=True):
        chosen = []
        for mesh_axis in table.get(name, ()) if name else ():
            if mesh_axis in used:
                raise ValueError(
                    f"sharding collision: logical axes {used[mesh_axis]!r} and {name!r} of an array with "
                    f"axes {tuple(axes)} both map to mesh axis {mesh_axis!r}"
                )
            used[mesh_axis] = name
            if size % (int(np.prod([mesh.shape[a] for a in chosen])) * mesh.shape[mesh_axis]) == 0:
                chosen.append(mesh_axis)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int], rules: Rules = RULES):
    return NamedSharding(mesh, logical_spec(axes, shape, mesh, rules))


def shard_params(params: Any, mesh: Mesh, rules: Rules = RULES, *, axes: Any) -> Any:
    """Place every parameter on `mesh` by its logical axes (`omni_jax.nn.params.logical_axes(specs)`)."""
    check_rules(rules)
    return jax.tree.map(
        lambda a, ax: jax.device_put(a, named_sharding(mesh, ax, a.shape, rules)),
        params,
        axes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules = RULES) -> Iterator[None]:
    """Within the block, `constrain` pins activations to `mesh` by `rules`."""
    check_rules(rules)
    token = _CONTEXT.set((mesh, rules))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current() -> tuple[Mesh, Rules] | None:
    """The (mesh, rules) of the innermost `use_mesh`, else None. Jitted entry points take it as a static
    argument so that a trace never outlives its mesh."""
    return _CONTEXT.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical axes under `use_mesh`; the identity outside it."""
    ctx = current()
    if ctx is None:
        return x
    mesh, rules = ctx
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, axes, x.shape, rules))
