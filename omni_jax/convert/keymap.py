"""HF state-dict key <-> JAX parameter path maps: templated rules with typed, invertible transforms.

A rule pairs an HF key template with a JAX path template, e.g.
    Rule("model.layers.{layer}.self_attn.q_proj.weight", "layers/attn/q/kernel", LINEAR)
`{layer}` and `{expert}` index stacked leading axes of the JAX array (layer first); any other placeholder
must appear in both templates and is substituted. Conversions collect every problem and raise once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from omni_jax.nn.params import flatten_paths, is_spec, set_path

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

    def _regex(self, template: str, sep: str) -> re.Pattern:
        parts, pos = [], 0
        for m in _PLACEHOLDER.finditer(template):
            parts.append(re.escape(template[pos : m.start()]))
            parts.append(rf"(?P<{m.group(1)}>\d+)" if m.group(1) in STACK_AXES else rf"(?P<{m.group(1)}>[^{sep}]+)")
            pos = m.end()
        parts.append(re.escape(template[pos:]))
        return re.compile("".join(parts))

    @property
    def hf_regex(self) -> re.Pattern:
        return self._regex(self.hf, ".")

    @property
    def jax_regex(self) -> re.Pattern:
        return self._regex(self.jax, "/")

    def stack_names(self) -> tuple[str, ...]:
        names = _PLACEHOLDER.findall(self.hf)
        return tuple(a for a in STACK_AXES if a in names)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one HF tensor lands: a JAX path, indices into its stacked axes, and the transform."""

    path: str
    index: tuple[int, ...]
    transform: Transform


def match(rules: Iterable[Rule], hf_key: str) -> Target | None:
    """The target of `hf_key` under the first rule that matches it fully, else None."""
    for rule in rules:
        m = rule.hf_regex.fullmatch(hf_key)
        if m:
            groups = m.groupdict()
            index = tuple(int(groups[a]) for a in rule.stack_names())
            path = rule.jax.format(**{k: v for k, v in groups.items() if k not in STACK_AXES})
            return Target(path, index, rule.transform)
    return None


class Assembler:
    """Builds a parameter tree from HF tensors fed one at a time; stacked arrays are filled in place."""

    def __init__(self, rules: list[Rule], specs: Any, dtype: Any = None):
        self.rules = rules
        self.specs = dict(flatten_paths(specs, is_leaf=is_spec))
        self.dtype = dtype
        self.arrays: dict[str, np.ndarray] = {}
        self.filled: dict[str, set] = {}
        self.problems: list[str] = []

    def add(self, hf_key: str, tensor: np.ndarray, source: str = "") -> None:
        where = f"{source}: " if source else ""
        target = match(self.rules, hf_key)
        if target is None:
            self.problems.append(f"{where}unexpected key {hf_key!r} {tuple(tensor.shape)}")
            return
        spec = self.specs.get(target.path)
        if spec is None:
            self.problems.append(f"{where}key {hf_key!r} maps to {target.path!r}, which the model does not have")
            return
        n_stack = len(target.index)
        value = target.transform.to_jax(np.asarray(tensor))
        if tuple(value.shape) != spec.shape[n_stack:] or any(
            i >= s for i, s in zip(target.index, spec.shape, strict=False)
        ):
            expected = spec.shape[n_stack:]
            self.problems.append(
                f"{where}shape mismatch for {hf_key!r} -> {target.path}{list(target.index) or ''}: "
                f"expected {target.transform.to_hf(np.empty(expected)).shape if expected else ()}"
                f" (JAX {expected}, stack {spec.shape[:n_stack]}), got {tuple(tensor.shape)}"
            )
            return
        dtype = np.dtype(self.dtype) if self.dtype is not None else value.dtype
        if target.path not in self.arrays:
            self.arrays[target.path] = np.zeros(spec.shape, dtype) if n_stack else None
            self.filled[target.path] = set()
        if target.index in self.filled[target.path]:
            self.problems.append(f"{where}duplicate key {hf_key!r} for {target.path}{list(target.index)}")
            return
        if n_stack:
            self.arrays[target.path][target.index] = value
        else:
            self.arrays[target.path] = value.astype(dtype)
        self.filled[target.path].add(target.index)

    def missing(self) -> list[str]:
        out = []
        for path, spec in self.specs.items():
            filled = self.filled.get(path, set())
            n_stack = _stack_depth(self.rules, path)
            expected = int(np.prod(spec.shape[:n_stack])) if n_stack else 1
            if len(filled) < expected:
                out.append(f"missing parameter {path} ({expected - len(filled)} of {expected} tensors absent)")
        return out

    def finish(self) -> dict:
        problems = self.problems + self.missing()
        if problems:
            raise ConversionError(problems)
        tree: dict = {}
        for path, array in self.arrays.items():
            set_path(tree, path, array)
        return tree


def _stack_depth(rules: list[Rule], path: str) -> int:
    for rule in rules:
        if rule.jax_regex.fullmatch(path):
            return len(rule.stack_names())
    return 0


def hf_to_params(state: Mapping[str, Any], rules: list[Rule], specs: Any, dtype: Any = None) -> dict:
    """Convert an in-memory HF state dict (torch tensors or arrays) to a parameter tree."""
    asm = Assembler(rules, specs, dtype)
    for key, tensor in state.items():
        asm.add(key, to_numpy(tensor))
    return asm.finish()


def params_to_hf(params: Any, rules: list[Rule], specs: Any) -> dict[str, np.ndarray]:
    """The inverse map: every parameter (and every slice of a stacked one) under its HF key."""
    out: dict[str, np.ndarray] = {}
    problems = []
    for path, array in flatten_paths(params):
        rule, m = next(((r, r.jax_regex.fullmatch(path)) for r in rules if r.jax_regex.fullmatch(path)), (None, None))
        if rule is None:
            problems.append(f"no rule maps parameter {path} back to an HF key")
            continue
        stack = rule.stack_names()
        array = np.asarray(array)
        for index in np.ndindex(*array.shape[: len(stack)]):
            names = dict(m.groupdict(), **dict(zip(stack, index, strict=True)))
            out[rule.hf.format(**names)] = np.ascontiguousarray(rule.transform.to_hf(array[index]))
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
