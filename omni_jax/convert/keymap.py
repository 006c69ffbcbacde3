"""HF state-dict key <-> JAX parameter path maps: templated rules with typed, invertible transforms.

A rule pairs an HF key template with a JAX path template, e.g.
    Rule("model.layers.{layer}.self_attn.q_proj.weight", "layers/attn/q/kernel", LINEAR)
`{layer}` and `{expert}` index stacked leading axes of the JAX array (layer first); any other placeholder
must appear in both templates and is substituted. `part=(i, n)` says the tensor is chunk i of n equal chunks
along the JAX array's last axis (per-expert gate and up halves of a fused gate_up kernel). `layers` lists the
HF layer numbers of the stacked axis when they are not 0..n-1 (a stack of only the MoE layers). An `alias`
rule is an accepted alternative layout: read, never written. A `Plan` checks every key and shape before any
tensor is read, collects every problem and raises once; arrays are then built one at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from omni_jax.nn.params import check_params, flatten_paths, is_spec, set_path

STACK_AXES = ("layer", "expert")


@dataclasses.dataclass(frozen=True)
class Transform:
    """An invertible layout change from a torch tensor to the JAX array."""

    name: str
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda a: a, lambda a: a)
LINEAR = Transform("transpose", lambda a: a.T, lambda a: a.T)  # (out, in) <-> (in, out)
CONV1D = Transform("conv1d OIK->KIO", lambda a: a.transpose(2, 1, 0), lambda a: a.transpose(2, 1, 0))
CONV2D = Transform("conv2d OIHW->HWIO", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
# torch ConvTranspose1d weight (C_in, C_out/groups, K) <-> JAX (K, C_in, C_out/groups)
CONV_TRANSPOSE1D = Transform(
    "conv_transpose1d IOK->KIO", lambda a: a.transpose(2, 0, 1), lambda a: a.transpose(1, 2, 0)
)
# fused experts (E, out, in) <-> (E, in, out)
EXPERTS = Transform("experts EOI->EIO", lambda a: a.transpose(0, 2, 1), lambda a: a.transpose(0, 2, 1))


class ConversionError(ValueError):
    """All problems found while converting, reported together."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} conversion problem(s):\n  " + "\n  ".join(problems))


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str
    jax: str
    transform: Transform = IDENTITY
    part: tuple[int, int] = (0, 1)
    alias: bool = False
    layers: tuple[int, ...] | None = None

    def _regex(self, template: str, sep: str) -> re.Pattern:
        parts, pos = [], 0
        for m in _PLACEHOLDER.finditer(template):
            parts.append(re.escape(template[pos : m.start()]))
            parts.append(
                rf"(?P<{m.group(1)}>\d+)" if m.group(1) in STACK_AXES else rf"(?P<{m.group(1)}>[^{sep}]+)"
            )
            pos = m.end()
        parts.append(re.escape(template[pos:]))
        return re.compile("".join(parts))

    @functools.cached_property
    def hf_regex(self) -> re.Pattern:
        return self._regex(self.hf, ".")

    @functools.cached_property
    def jax_regex(self) -> re.Pattern:
        return self._regex(self.jax, "/")

    def stack_names(self) -> tuple[str, ...]:
        names = _PLACEHOLDER.findall(self.hf)
        return tuple(a for a in STACK_AXES if a in names)

    def stack_index(self, groups: dict[str, str]) -> tuple[int, ...] | None:
        """Stack indices for the placeholder values of a matched key (None: layer not in `layers`)."""
        index = [int(groups[a]) for a in self.stack_names()]
        if self.layers is not None and index:
            if index[0] not in self.layers:
                return None
            index[0] = self.layers.index(index[0])
        return tuple(index)

    def hf_names(self, index: tuple[int, ...]) -> dict[str, int]:
        """Placeholder values of the HF key for stack indices `index` (the inverse of stack_index)."""
        names = dict(zip(self.stack_names(), index, strict=True))
        if self.layers is not None and "layer" in names:
            names["layer"] = self.layers[names["layer"]]
        return names


def linear_rules(hf: str, ours: str, *, bias: bool = True) -> list[Rule]:
    """An nn.Linear at `hf` <-> {kernel, bias} at `ours`."""
    return [Rule(f"{hf}.weight", f"{ours}/kernel", LINEAR)] + (
        [Rule(f"{hf}.bias", f"{ours}/bias")] if bias else []
    )


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one HF tensor lands: a JAX path, indices into its stacked axes, the transform and the chunk."""

    path: str
    index: tuple[int, ...]
    transform: Transform
    part: tuple[int, int] = (0, 1)

    def region(self, array: np.ndarray) -> np.ndarray:
        """The view of `array` this tensor fills."""
        view = array[self.index]
        i, n = self.part
        if n == 1:
            return view
        size = view.shape[-1] // n
        return view[..., i * size : (i + 1) * size]


def match(rules: Iterable[Rule], hf_key: str) -> Target | None:
    """The target of `hf_key` under the first rule that matches it fully, else None."""
    for rule in rules:
        m = rule.hf_regex.fullmatch(hf_key)
        index = None if m is None else rule.stack_index(m.groupdict())
        if index is not None:
            path = rule.jax.format(**{k: v for k, v in m.groupdict().items() if k not in STACK_AXES})
            return Target(path, index, rule.transform, rule.part)
    return None


def export_targets(rules: Iterable[Rule], path: str, shape: tuple[int, ...]) -> list[tuple[str, Target]]:
    """Every (HF key, target) that writes parameter `path` of `shape` back, from the non-alias rules."""
    out = []
    for rule in rules:
        m = None if rule.alias else rule.jax_regex.fullmatch(path)
        if m:
            stack = rule.stack_names()
            for index in np.ndindex(*shape[: len(stack)]):
                names = dict(m.groupdict(), **rule.hf_names(index))
                out.append((rule.hf.format(**names), Target(path, index, rule.transform, rule.part)))
    return out


def hf_shape(target: Target, jax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape of `target` within a JAX array of `jax_shape`, computed without data."""
    return target.transform.to_hf(target.region(_phantom(jax_shape))).shape


def _phantom(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-stride array of `shape`: transforms and slices give output shapes without allocating."""
    return np.broadcast_to(np.zeros((), np.float32), shape)


@dataclasses.dataclass(frozen=True)
class Piece:
    """One HF tensor feeding a parameter."""

    key: str
    target: Target
    source: str = ""


class Plan:
    """Which HF tensors fill each parameter, checked from keys and shapes alone before anything is read."""

    def __init__(self, rules: list[Rule], specs: Any, passthrough: Iterable[str] = ()):
        self.rules = rules
        self.specs = dict(flatten_paths(specs, is_leaf=is_spec))
        self.passthrough_patterns = [re.compile(p) for p in passthrough]
        self.pieces: dict[str, list[Piece]] = {}
        self.passthrough: list[str] = []
        self.problems: list[str] = []

    def add(self, hf_key: str, shape: tuple[int, ...], source: str = "") -> None:
        where = f"{source}: " if source else ""
        target = match(self.rules, hf_key)
        if target is None:
            if any(p.match(hf_key) for p in self.passthrough_patterns):
                self.passthrough.append(hf_key)
            else:
                self.problems.append(f"{where}unexpected key {hf_key!r} {tuple(shape)}")
            return
        spec = self.specs.get(target.path)
        if spec is None:
            self.problems.append(
                f"{where}key {hf_key!r} maps to {target.path!r}, which the model does not have"
            )
            return
        if any(i >= s for i, s in zip(target.index, spec.shape, strict=False)):
            self.problems.append(
                f"{where}unexpected key {hf_key!r}: index {list(target.index)} is out of range for "
                f"{target.path} (stacked {spec.shape[: len(target.index)]})"
            )
            return
        expected = hf_shape(target, spec.shape)
        if tuple(shape) != expected:
            self.problems.append(
                f"{where}shape mismatch for {hf_key!r} -> {target.path}{list(target.index) or ''}: "
                f"expected {expected}, got {tuple(shape)}"
            )
            return
        self.pieces.setdefault(target.path, []).append(Piece(hf_key, target, source))

    def check(self) -> list[str]:
        """Every problem: those found by `add`, then duplicates and missing keys."""
        problems = list(self.problems)
        for path, spec in self.specs.items():
            problems += self._coverage(path, spec.shape)
        return problems

    def raise_problems(self) -> None:
        problems = self.check()
        if problems:
            raise ConversionError(problems)

    def _coverage(self, path: str, shape: tuple[int, ...]) -> list[str]:
        pieces = self.pieces.get(path, [])
        exports = export_targets(self.rules, path, shape)
        targets = [p.target for p in pieces] + [t for _, t in exports]
        if not pieces:
            keys = ", ".join(k for k, _ in exports[:3]) + (" ..." if len(exports) > 3 else "")
            return [f"missing parameter {path} (HF {keys or 'no rule'})"]
        depth = max(len(t.index) for t in targets)
        n_parts = math.lcm(*(t.part[1] for t in targets))
        covered = np.zeros((*shape[:depth], n_parts), bool)
        problems = []
        for piece in pieces:
            cells = _cells(covered, piece.target, n_parts)
            if cells.any():
                problems.append(
                    f"{piece.source + ': ' if piece.source else ''}duplicate key {piece.key!r} for {path}"
                )
            cells[...] = True
        missing = [key for key, t in exports if not _cells(covered, t, n_parts).all()]
        if missing or not covered.all():
            shown = ", ".join(repr(k) for k in missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            problems.append(f"missing key(s) for {path}: {shown or f'{int((~covered).sum())} slices'}")
        return problems

    def build(self, path: str, read: Callable[[str], np.ndarray], dtype: Any = None) -> np.ndarray:
        """Parameter `path` assembled from its HF tensors, read one at a time."""
        spec = self.specs[path]
        pieces = self.pieces[path]
        first = pieces[0].target
        if len(pieces) == 1 and not first.index and first.part == (0, 1):
            value = first.transform.to_jax(read(pieces[0].key))
            return np.ascontiguousarray(value, dtype=dtype or value.dtype)
        out = None
        for piece in pieces:
            value = piece.target.transform.to_jax(read(piece.key))
            if out is None:
                out = np.empty(spec.shape, dtype or value.dtype)
            piece.target.region(out)[...] = value
        return out

    def tree(self, read: Callable[[str], np.ndarray], dtype: Any = None) -> dict:
        tree: dict = {}
        for path in self.specs:
            set_path(tree, path, self.build(path, read, dtype))
        return tree


def _cells(covered: np.ndarray, target: Target, n_parts: int) -> np.ndarray:
    i, n = target.part
    step = n_parts // n
    return covered[target.index][..., i * step : (i + 1) * step]


def hf_to_params(state: Mapping[str, Any], rules: list[Rule], specs: Any, dtype: Any = None) -> dict:
    """Convert an in-memory HF state dict (torch tensors or arrays) to a parameter tree."""
    arrays = {key: to_numpy(tensor) for key, tensor in state.items()}
    plan = Plan(rules, specs)
    for key, array in arrays.items():
        plan.add(key, array.shape)
    plan.raise_problems()
    return plan.tree(arrays.__getitem__, dtype)


def params_to_hf(params: Any, rules: list[Rule], specs: Any = None) -> dict[str, np.ndarray]:
    """The inverse map: every parameter (and every slice or chunk of a stacked one) under its HF key."""
    out: dict[str, np.ndarray] = {}
    problems = check_params(specs, params) if specs is not None else []
    for path, array in flatten_paths(params):
        array = np.asarray(array)
        exports = export_targets(rules, path, array.shape)
        if not exports:
            problems.append(f"no rule maps parameter {path} back to an HF key")
        for key, target in exports:
            out[key] = np.ascontiguousarray(target.transform.to_hf(target.region(array)))
    if problems:
        raise ConversionError(problems)
    return out


def to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor (any dtype, bfloat16 included) or array as numpy, without importing torch."""
    if hasattr(tensor, "detach"):
        t = tensor.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import ml_dtypes

            return t.view(dtype=_torch_int16(t)).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(tensor)


def _torch_int16(t):
    import torch

    return torch.int16
