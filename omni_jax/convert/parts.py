"""Checkpoint maps: how the parts of one model_type's HF checkpoint land in omni_jax parameters.

A `CheckpointMap` is a list of parts, each one component module (omni_jax.models) mounted at an HF key
prefix (the hub layout, which is what transformers 5.23 `save_pretrained` writes) and, for composites, under a
subtree of the parameters. The rules of each part come from its module's `hf_rules`; aliases accept the 5.23
in-memory names as well, and MoE experts are accepted both per expert (hub files) and fused (the
transformers v5 layout). Keys no omni_jax model uses are kept verbatim as passthrough tensors. The maps
themselves live with their families (omni_jax.families.<family>.checkpoint).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from types import ModuleType
from typing import Any

from omni_jax.convert.keymap import EXPERTS, LINEAR, Rule, hf_to_params


@dataclasses.dataclass(frozen=True)
class Part:
    """One component inside a checkpoint: its module (param_specs, hf_rules) and config class (from_hf)."""

    name: str | None  # subtree of the parameters (None: the whole tree)
    module: ModuleType
    config_class: type
    prefix: str  # HF key prefix on disk
    hf_config: tuple[str, ...] = ()  # sub-config path handed to config_class.from_hf
    aliases: tuple[tuple[str, str], ...] = ()  # (hub prefix, accepted alternative prefix)
    optional: bool = False  # a checkpoint may leave this part out (e.g. Qwen3-Omni's talker)

    def config(self, hf: dict) -> Any:
        for name in self.hf_config:
            hf = hf[name]
        return self.config_class.from_hf(hf)

    def rules(self, config: Any) -> list[Rule]:
        rules = expert_layouts(self.module.hf_rules(config, self.prefix))
        if self.name is not None:
            rules = [dataclasses.replace(r, jax=f"{self.name}/{r.jax}") for r in rules]
        return rules + [
            dataclasses.replace(r, hf=alt + r.hf[len(hub) :], alias=True)
            for hub, alt in self.aliases
            for r in rules
            if r.hf.startswith(hub)
        ]

    def prefixes(self) -> tuple[str, ...]:
        return (self.prefix, *(alt for _, alt in self.aliases))


@dataclasses.dataclass(frozen=True)
class PartsConfig:
    """The configs of a checkpoint's parts, by part name (None for a single-part map)."""

    model_type: str
    parts: tuple[tuple[str | None, Any], ...]

    def __getitem__(self, name: str | None) -> Any:
        return dict(self.parts)[name]


@dataclasses.dataclass(frozen=True)
class CheckpointMap:
    model_type: str
    architectures: tuple[str, ...]
    parts: tuple[Part, ...]
    passthrough: tuple[str, ...] = ()  # regexes of HF keys kept verbatim
    notes: str = ""

    def present(self, keys: Collection[str]) -> tuple[str | None, ...]:
        """Names of the parts with at least one key among `keys`."""
        if len(self.parts) == 1:
            return (self.parts[0].name,)
        return tuple(p.name for p in self.parts if any(k.startswith(p.prefixes()) for k in keys))

    def missing_parts(self, present: Collection[str | None]) -> list[str]:
        """A problem line per required part absent from `present` (optional ones may be absent)."""
        return [
            f"missing required part {p.name!r}: no key starts with {' or '.join(map(repr, p.prefixes()))}"
            for p in self.parts
            if not p.optional and p.name not in present
        ]

    def optional_parts(self) -> tuple[str | None, ...]:
        return tuple(p.name for p in self.parts if p.optional)

    def config(self, hf: dict, parts: Collection[str | None] | None = None) -> PartsConfig:
        """Configs of the parts named (all when None)."""
        chosen = [p for p in self.parts if parts is None or p.name in parts]
        if not chosen:
            raise ValueError(
                f"no weights of any {self.model_type} part ({', '.join(p.prefix for p in self.parts)})"
            )
        return PartsConfig(self.model_type, tuple((p.name, p.config(hf)) for p in chosen))

    def unwrap(self, config: PartsConfig) -> Any:
        """The component config itself for a single-part map, else the PartsConfig."""
        return config[None] if len(self.parts) == 1 else config

    def specs(self, config: PartsConfig) -> dict:
        parts = self._parts(config)
        if len(self.parts) == 1:
            return parts[0].module.param_specs(config[None])
        return {p.name: p.module.param_specs(config[p.name]) for p in parts}

    def rules(self, config: PartsConfig) -> list[Rule]:
        return [r for p in self._parts(config) for r in p.rules(config[p.name])]

    def state_to_params(self, state: Mapping[str, Any], hf_config: dict) -> dict:
        """An in-memory state dict (torch tensors or arrays, hub or in-memory key names) and its HF config
        dict -> parameters of every part; passthrough keys are left out."""
        config = self.config(hf_config)
        keep = {k: v for k, v in state.items() if not any(re.match(p, k) for p in self.passthrough)}
        return hf_to_params(keep, self.rules(config), self.specs(config))

    def _parts(self, config: PartsConfig) -> list[Part]:
        names = {n for n, _ in config.parts}
        return [p for p in self.parts if p.name in names]


def expert_layouts(rules: list[Rule]) -> list[Rule]:
    """Fused expert rules (`mlp.experts.gate_up_proj` (E, 2I, D), `down_proj` (E, D, I)) become the hub's
    per-expert rules (written) plus the fused rule (accepted as an alias)."""
    out = []
    for rule in rules:
        m = re.fullmatch(r"(.*\.mlp\.experts\.)(gate_up_proj|down_proj)", rule.hf)
        if m is None or rule.transform is not EXPERTS:
            out.append(rule)
            continue
        each = m.group(1) + "{expert}."
        names = ("gate_proj", "up_proj") if m.group(2) == "gate_up_proj" else ("down_proj",)
        out += [
            dataclasses.replace(rule, hf=f"{each}{n}.weight", transform=LINEAR, part=(i, len(names)))
            for i, n in enumerate(names)
        ]
        out.append(dataclasses.replace(rule, alias=True))
    return out


def find_map(maps: Collection[CheckpointMap], hf_config: dict, source: str = "config.json") -> CheckpointMap:
    """The map of an HF config dict among `maps`, by model_type, else by architectures."""
    model_type = hf_config.get("model_type")
    for cmap in maps:
        if cmap.model_type == model_type:
            return cmap
    for arch in hf_config.get("architectures") or ():
        for cmap in maps:
            if arch in cmap.architectures:
                return cmap
    raise ValueError(
        f"{source}: unsupported model_type {model_type!r} (architectures {hf_config.get('architectures')}); "
        f"supported: {', '.join(sorted(m.model_type for m in maps))}"
    )
