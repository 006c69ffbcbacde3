"""AudioFlamingo3 multi-modal projector: linear_1 -> activation -> linear_2, audio to text embeddings."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from omni_jax.convert.keymap import LINEAR, Rule
from omni_jax.models.audio_common import hf_get, sub_config
from omni_jax.nn.layers import activation, linear, linear_spec


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    d_audio: int
    d_text: int
    activation: str = "gelu"
    bias: bool = True

    @classmethod
    def from_hf(cls, cfg: Any) -> ProjectorConfig:
        """From an AudioFlamingo3Config (object or dict)."""
        return cls(
            d_audio=hf_get(sub_config(cfg, "audio_config"), "hidden_size", "d_model"),
            d_text=hf_get(sub_config(cfg, "text_config"), "hidden_size"),
            activation=hf_get(cfg, "projector_hidden_act", default="gelu"),
            bias=hf_get(cfg, "projector_bias", default=True),
        )


def param_specs(config: ProjectorConfig) -> dict:
    return {
        "linear_1": linear_spec(config.d_audio, config.d_text, bias=config.bias, axes=("embed", "mlp")),
        "linear_2": linear_spec(config.d_text, config.d_text, bias=config.bias, axes=("mlp", "embed")),
    }


def hf_rules(config: ProjectorConfig, prefix: str = "") -> list[Rule]:
    """Keys relative to the projector module (`multi_modal_projector.` on the hub)."""
    rules = []
    for name in ("linear_1", "linear_2"):
        rules.append(Rule(f"{prefix}{name}.weight", f"{name}/kernel", LINEAR))
        if config.bias:
            rules.append(Rule(f"{prefix}{name}.bias", f"{name}/bias"))
    return rules


def forward(params: dict, config: ProjectorConfig, x: jax.Array) -> jax.Array:
    """x: ... d_audio -> ... d_text."""
    return linear(params["linear_2"], activation(config.activation)(linear(params["linear_1"], x)))
