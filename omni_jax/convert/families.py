"""Dispatch by config.json (`model_type`, else `architectures`) to the omni_jax modules that hold the weights.

A family is a list of parts, each one model module mounted at an HF key prefix (the hub layout, which is what
transformers 5.23 `save_pretrained` writes) and, for composites, under a subtree of the parameters. The rules
of each part come from its module's `hf_rules`; aliases accept the 5.23 in-memory names as well, and MoE
experts are accepted both per expert (hub files) and fused (the transformers v5 layout). Keys no omni_jax
model uses (Whisper's text decoder, Qwen3-Omni's vision tower) are kept verbatim as passthrough tensors.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Collection
from typing import Any

from omni_jax.convert.keymap import EXPERTS, LINEAR, Rule


@dataclasses.dataclass(frozen=True)
class Part:
    """One model module inside a checkpoint."""

    name: str | None  # subtree of the parameters (None: the whole tree)
    module: str  # under omni_jax.models
    config_class: str
    prefix: str  # HF key prefix on disk
    hf_config: tuple[str, ...] = ()  # sub-config path handed to config_class.from_hf
    aliases: tuple[tuple[str, str], ...] = ()  # (hub prefix, accepted alternative prefix)

    def load(self) -> Any:
        return importlib.import_module(f"omni_jax.models.{self.module}")

    def config(self, hf: dict) -> Any:
        for name in self.hf_config:
            hf = hf[name]
        return getattr(self.load(), self.config_class).from_hf(hf)

    def rules(self, config: Any) -> list[Rule]:
        rules = self.load().hf_rules(config, self.prefix)
        if self.module == "decoder":
            rules = decoder_stacks(rules, config)
        rules = expert_layouts(rules)
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
class FamilyConfig:
    """The configs of a checkpoint's parts, by part name (None for a single-module family)."""

    model_type: str
    parts: tuple[tuple[str | None, Any], ...]

    def __getitem__(self, name: str | None) -> Any:
        return dict(self.parts)[name]


@dataclasses.dataclass(frozen=True)
class Family:
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

    def config(self, hf: dict, parts: Collection[str | None] | None = None) -> FamilyConfig:
        """Configs of the parts named (all when None)."""
        chosen = [p for p in self.parts if parts is None or p.name in parts]
        if not chosen:
            raise ValueError(
                f"no weights of any {self.model_type} part ({', '.join(p.prefix for p in self.parts)})"
            )
        return FamilyConfig(self.model_type, tuple((p.name, p.config(hf)) for p in chosen))

    def unwrap(self, config: FamilyConfig) -> Any:
        """The module config itself for a single-module family, else the FamilyConfig."""
        return config[None] if len(self.parts) == 1 else config

    def specs(self, config: FamilyConfig) -> dict:
        parts = self._parts(config)
        if len(self.parts) == 1:
            return parts[0].load().param_specs(config[None])
        return {p.name: p.load().param_specs(config[p.name]) for p in parts}

    def rules(self, config: FamilyConfig) -> list[Rule]:
        return [r for p in self._parts(config) for r in p.rules(config[p.name])]

    def _parts(self, config: FamilyConfig) -> list[Part]:
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


def decoder_stacks(rules: list[Rule], config: Any) -> list[Rule]:
    """The decoder stacks its dense (`mlp/`) and MoE (`moe/`) feed-forwards separately: give those rules the
    HF layer numbers of their stack."""
    kinds = {"mlp/": config.dense_layers, "moe/": config.moe_layers}
    out = []
    for rule in rules:
        layers = next((v for k, v in kinds.items() if rule.jax.startswith(k)), None)
        if layers is not None and rule.layers is None and layers != tuple(range(len(layers))):
            rule = dataclasses.replace(rule, layers=layers)
        out.append(rule)
    return out


_DECODER = ("decoder", "Config")

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family(
            "whisper",
            ("WhisperForConditionalGeneration", "WhisperModel"),
            (
                Part(
                    None,
                    "whisper_encoder",
                    "WhisperEncoderConfig",
                    "model.encoder.",
                    aliases=(("model.", ""),),
                ),
            ),
            passthrough=(r"(model\.)?decoder\.", r"proj_out\."),
            notes="only the encoder is implemented; decoder weights are kept verbatim (passthrough)",
        ),
        Family(
            "audioflamingo3",
            ("AudioFlamingo3ForConditionalGeneration",),
            (
                Part(
                    "encoder",
                    "whisper_encoder",
                    "WhisperEncoderConfig",
                    "audio_tower.",
                    aliases=(("audio_tower.", "model.audio_tower."),),
                ),
                Part(
                    "projector",
                    "projector",
                    "ProjectorConfig",
                    "multi_modal_projector.",
                    aliases=(("multi_modal_projector.", "model.multi_modal_projector."),),
                ),
                Part(
                    "decoder",
                    *_DECODER,
                    "language_model.",
                    ("text_config",),
                    aliases=(
                        ("language_model.model.", "model.language_model."),
                        ("language_model.lm_head.", "lm_head."),
                    ),
                ),
            ),
        ),
        Family(
            "qwen3_omni_moe",
            ("Qwen3OmniMoeForConditionalGeneration",),
            (
                Part(
                    "audio_encoder",
                    "aut_encoder",
                    "AuTConfig",
                    "thinker.audio_tower.",
                    ("thinker_config",),
                    aliases=(("thinker.audio_tower.", "thinker.model.audio_tower."),),
                ),
                Part(
                    "thinker",
                    *_DECODER,
                    "thinker.",
                    ("thinker_config", "text_config"),
                    aliases=(("thinker.model.", "thinker.model.language_model."),),
                ),
                Part("talker", *_DECODER, "talker.", ("talker_config", "text_config")),
                Part(
                    "code_predictor",
                    *_DECODER,
                    "talker.code_predictor.",
                    ("talker_config", "code_predictor_config"),
                ),
                Part("code2wav", "code2wav", "Config", "code2wav."),
            ),
            passthrough=(
                r"thinker\.(model\.)?visual\.",
                r"talker\.(model\.codec_embedding|codec_head|text_projection|hidden_projection)\.",
                r"talker\.code_predictor\.(model\.codec_embedding|lm_head)\.",
            ),
            notes="the vision tower and the talker's codec embeddings, projections and heads have no "
            "omni_jax model yet; they are kept verbatim (passthrough)",
        ),
        Family(
            "qwen3_omni_moe_thinker",
            ("Qwen3OmniMoeThinkerForConditionalGeneration",),
            (
                Part(
                    "audio_encoder",
                    "aut_encoder",
                    "AuTConfig",
                    "audio_tower.",
                    aliases=(("audio_tower.", "model.audio_tower."),),
                ),
                Part(
                    "thinker",
                    *_DECODER,
                    "",
                    ("text_config",),
                    aliases=(("model.", "model.language_model."),),
                ),
            ),
            passthrough=(r"(model\.)?visual\.",),
            notes="a thinker saved on its own; the vision tower has no omni_jax model yet (passthrough)",
        ),
        *(
            Family(t, (a,), (Part(None, *_DECODER, ""),))
            for t, a in (
                ("qwen2", "Qwen2ForCausalLM"),
                ("qwen3", "Qwen3ForCausalLM"),
                ("qwen3_moe", "Qwen3MoeForCausalLM"),
            )
        ),
    )
}


def family_of(hf_config: dict, source: str = "config.json") -> Family:
    """The family of an HF config dict, by model_type, else by architectures."""
    model_type = hf_config.get("model_type")
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    for arch in hf_config.get("architectures") or ():
        for family in FAMILIES.values():
            if arch in family.architectures:
                return family
    raise ValueError(
        f"{source}: unsupported model_type {model_type!r} (architectures {hf_config.get('architectures')}); "
        f"supported: {', '.join(sorted(FAMILIES))}"
    )
