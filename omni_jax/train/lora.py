"""LoRA on the decoder's linears, as PEFT computes it: y = x W + b + (alpha / rank) (x A) B, A (in r) drawn
uniform in +-1/sqrt(in) (PEFT's kaiming_uniform(a=sqrt(5))), B (r out) zero, so step 0 is the base model.

    lora = LoraConfig.from_dict({"rank": 8, "alpha": 16, "targets": ["*/attn/*", "*/mlp/*"]})
    values, specs = adapters(param_specs, "decoder", lora, seed=0)  # lora_a, lora_b, lora_scale leaves
    merged = merge(merge_params(params, values))                   # W + scale A B, adapters dropped

Targets are fnmatch patterns over the module paths of the decoder's part ("decoder" for AF3, "thinker" for
the Qwen3-Omni Thinker): `<part>/layers/attn/{q,k,v,o}`, `<part>/mlp/{gate,up,down}` (dense layers),
`<part>/moe/shared/{gate,up,down}` and `<part>/moe/shared_gate` (shared expert), `<part>/lm_head`. The
router and the routed experts are not LoRA targets. The adapters sit next to the kernel they adapt, with
the kernel's stacking dimension, so the layer scan slices them per layer and `nn.layers.linear` adds them;
they get the kernel's logical axes (A: in-axis x None, B: None x out-axis) for sharding.
"""

from __future__ import annotations

import dataclasses
import fnmatch

import numpy as np

from omni_jax.nn.params import ParamSpec, flatten_paths, is_spec, set_path

ADAPTERS = ("*/lora_a", "*/lora_b")  # the trainable leaves (lora_scale is a frozen constant)
NOT_TARGETS = ("router", "experts")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("*/attn/q", "*/attn/v")  # PEFT's default for Qwen2 / Qwen3

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"recipe: lora.rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise ValueError(f"recipe: lora.alpha must be a positive number, got {self.alpha!r}")
        if not self.targets or not all(isinstance(t, str) for t in self.targets):
            raise ValueError(f"recipe: lora.targets must be a non-empty list of patterns, got {self.targets}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_dict(cls, raw) -> LoraConfig:
        if not isinstance(raw, dict):
            raise ValueError(f"recipe: lora must be an object with keys rank, alpha, targets; got {raw!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        if unknown := sorted(set(raw) - set(known)):
            raise ValueError(f"recipe: unknown lora keys {unknown}; known: {known}")
        values = dict(raw)
        if isinstance(values.get("targets"), list | tuple):
            values["targets"] = tuple(values["targets"])
        return cls(**values)


def linear_modules(specs: dict, part: str) -> dict[str, ParamSpec]:
    """Module path -> kernel spec of every linear of the decoder part `nn.layers.linear` applies."""
    found = {}
    for path, spec in flatten_paths(specs[part], is_leaf=is_spec):
        module, _, leaf = f"{part}/{path}".rpartition("/")
        if leaf == "kernel" and not set(module.split("/")) & set(NOT_TARGETS):
            found[module] = spec
    return found


def select(specs: dict, part: str, lora: LoraConfig) -> dict[str, ParamSpec]:
    """The targeted modules; a pattern that matches none is an error naming it and the candidates."""
    modules = linear_modules(specs, part)
    if unused := [t for t in lora.targets if not fnmatch.filter(modules, t)]:
        raise ValueError(f"lora.targets {unused} match no linear module; the modules are {sorted(modules)}")
    return {m: s for m, s in modules.items() if any(fnmatch.fnmatchcase(m, t) for t in lora.targets)}


def adapter_specs(kernel: ParamSpec, lora: LoraConfig) -> dict[str, ParamSpec]:
    """lora_a (*stack in r), lora_b (*stack r out), lora_scale (*stack): the kernel's axes carried over."""
    *stack, d_in, d_out = kernel.shape
    *stack_axes, in_axis, out_axis = kernel.axes
    return {
        "lora_a": ParamSpec((*stack, d_in, lora.rank), (*stack_axes, in_axis, None)),
        "lora_b": ParamSpec((*stack, lora.rank, d_out), (*stack_axes, None, out_axis), init="zeros"),
        "lora_scale": ParamSpec(tuple(stack), tuple(stack_axes), init="constant", scale=lora.scale),
    }


def adapters(specs: dict, part: str, lora: LoraConfig, seed: int) -> tuple[dict, dict]:
    """(values, specs) of the adapters beside every targeted kernel, as trees of their own (merge them into
    the params and specs with `step.merge_params`); host numpy, the same on every process."""
    rng = np.random.default_rng(seed)
    values: dict = {}
    new_specs: dict = {}
    for module, kernel in sorted(select(specs, part, lora).items()):
        bound = 1.0 / np.sqrt(kernel.shape[-2])
        for name, spec in adapter_specs(kernel, lora).items():
            if name == "lora_a":
                value = rng.uniform(-bound, bound, spec.shape)
            else:  # zeros (B) or the constant scale
                value = np.full(spec.shape, spec.scale if spec.init == "constant" else 0.0)
            set_path(values, f"{module}/{name}", value.astype(np.float32))
            set_path(new_specs, f"{module}/{name}", spec)
    return values, new_specs


def merge(params: dict) -> dict:
    """Host params with each adapted kernel replaced by W + scale A B (float32) and the adapters dropped."""
    flat = dict(flatten_paths(params))
    merged: dict = {}
    for path, leaf in flat.items():
        module, _, name = path.rpartition("/")
        if name.startswith("lora_"):
            continue
        if name == "kernel" and f"{module}/lora_a" in flat:
            a, b = flat[f"{module}/lora_a"], flat[f"{module}/lora_b"]
            scale = np.asarray(flat[f"{module}/lora_scale"], np.float32)[..., None, None]
            delta = scale * np.matmul(a.astype(np.float32), b.astype(np.float32))
            leaf = (np.asarray(leaf, np.float32) + delta).astype(leaf.dtype)
        set_path(merged, path, leaf)
    return merged
