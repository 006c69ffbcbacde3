"""Whisper-style audio encoder serving WhisperEncoder, Qwen2AudioEncoder and AudioFlamingo3Encoder.

conv1 (k3) -> GELU -> conv2 (k3, stride 2) -> GELU -> + whole position table -> pre-LN layers (k without bias,
biased q scaled before q.k) -> [AvgPool(2)] -> LayerNorm. The three classes differ only by switches.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.convert.keymap import CONV1D, Rule
from omni_jax.models.audio_common import (
    LN_EPS,
    encoder_stack,
    hf_get,
    layer_rules,
    layer_specs,
    masked_attend,
    norm_rules,
    sub_config,
)
from omni_jax.nn.layers import conv1d, conv1d_spec, layer_norm, layer_norm_spec
from omni_jax.nn.params import ParamSpec

# model_type -> (pool, mask_keys, cast_input)
_FLAVOURS = {
    "whisper": (False, False, False),
    "qwen2_audio_encoder": (True, True, True),
    "audioflamingo3_encoder": (True, True, False),
}


@dataclasses.dataclass(frozen=True)
class WhisperEncoderConfig:
    num_mel_bins: int
    d_model: int
    layers: int
    heads: int
    ffn_dim: int
    max_source_positions: int
    activation: str = "gelu"
    pool: bool = False  # AvgPool1d(2, 2) on time before the final LayerNorm
    mask_keys: bool = False  # padded conv frames are masked as attention keys
    cast_input: bool = False  # features are cast to the parameter dtype (else a mismatch is an error)

    @property
    def frames(self) -> int:
        """Mel frames every input must have (conv2 halves them to max_source_positions)."""
        return 2 * self.max_source_positions

    @classmethod
    def from_hf(cls, cfg: Any) -> WhisperEncoderConfig:
        cfg = sub_config(cfg, "audio_config")
        model_type = hf_get(cfg, "model_type")
        if model_type not in _FLAVOURS:
            raise ValueError(
                f"not a Whisper-style encoder config: model_type {model_type!r}; known {list(_FLAVOURS)}"
            )
        pool, mask_keys, cast_input = _FLAVOURS[model_type]
        return cls(
            num_mel_bins=hf_get(cfg, "num_mel_bins"),
            d_model=hf_get(cfg, "d_model", "hidden_size"),
            layers=hf_get(cfg, "encoder_layers", "num_hidden_layers"),
            heads=hf_get(cfg, "encoder_attention_heads", "num_attention_heads"),
            ffn_dim=hf_get(cfg, "encoder_ffn_dim", "intermediate_size"),
            max_source_positions=hf_get(cfg, "max_source_positions"),
            activation=hf_get(cfg, "activation_function", default="gelu"),
            pool=pool,
            mask_keys=mask_keys,
            cast_input=cast_input,
        )


def param_specs(config: WhisperEncoderConfig) -> dict:
    d = config.d_model
    return {
        "conv1": conv1d_spec(config.num_mel_bins, d, 3),
        "conv2": conv1d_spec(d, d, 3),
        "pos_embed": ParamSpec((config.max_source_positions, d), (None, "embed")),
        "layers": layer_specs(d, config.ffn_dim, config.layers, k_bias=False),
        "final_norm": layer_norm_spec(d),
    }


def hf_rules(config: WhisperEncoderConfig, prefix: str = "") -> list[Rule]:
    """Keys relative to the encoder module (`model.encoder.` / `audio_tower.` in full checkpoints)."""
    del config  # the key layout is the same for every size
    p = prefix
    rules = [Rule(f"{p}{c}.weight", f"{c}/kernel", CONV1D) for c in ("conv1", "conv2")]
    rules += [Rule(f"{p}{c}.bias", f"{c}/bias") for c in ("conv1", "conv2")]
    rules += [Rule(f"{p}embed_positions.weight", "pos_embed")]
    return rules + layer_rules(p, k_bias=False) + norm_rules(f"{p}layer_norm", "final_norm")


# ---------------------------------------------------------------- lengths


def conv_lengths(frame_lengths):
    """Valid conv2 frames for `frame_lengths` valid mel frames: (L - 1) // 2 + 1."""
    return (frame_lengths - 1) // 2 + 1


def output_lengths(config: WhisperEncoderConfig, frame_lengths):
    """Valid output frames: conv2 frames, halved (floor) by the pooling when it is on."""
    c = conv_lengths(frame_lengths)
    return (c - 2) // 2 + 1 if config.pool else c


# ---------------------------------------------------------------- forward


@functools.partial(jax.jit, static_argnums=1)
def forward(params: dict, config: WhisperEncoderConfig, features: jax.Array, key_lengths=None) -> jax.Array:
    """features: b mel frames (channels-first, as HF); key_lengths: b valid conv2 frames, or None for no key
    mask. -> b t d (every frame, padding included, as HF)."""
    x = jnp.swapaxes(features, 1, 2)  # b t mel
    if config.cast_input:
        x = x.astype(params["conv1"]["kernel"].dtype)
    x = jax.nn.gelu(conv1d(params["conv1"], x, padding=1), approximate=False)
    x = jax.nn.gelu(conv1d(params["conv2"], x, stride=2, padding=1), approximate=False)  # b t/2 d
    x = x + params["pos_embed"].astype(x.dtype)
    key_mask = None if key_lengths is None else jnp.arange(x.shape[1]) < key_lengths[:, None]
    x = encoder_stack(
        params["layers"],
        x,
        masked_attend(key_mask),
        heads=config.heads,
        act=config.activation,
        scale_q_first=True,
    )
    if config.pool:
        b, t, d = x.shape
        x = x[:, : t // 2 * 2].reshape(b, t // 2, 2, d).mean(axis=2)
    return layer_norm(params["final_norm"], x, LN_EPS)


def encode(
    params: dict, config: WhisperEncoderConfig, features, frame_mask=None
) -> tuple[jax.Array, jax.Array]:
    """Validated entry point. features: b mel frames; frame_mask: b frames (1 = real frame, a prefix), or None
    for all-valid. -> (hidden b t d, valid b t) with the lengths propagated through conv2 and pooling."""
    lengths = check_inputs(config, features, frame_mask, params["conv1"]["kernel"].dtype)
    key_lengths = jnp.asarray(conv_lengths(lengths)) if config.mask_keys and frame_mask is not None else None
    hidden = forward(params, config, jnp.asarray(features), key_lengths)
    valid = np.arange(hidden.shape[1]) < output_lengths(config, lengths)[:, None]
    return hidden, jnp.asarray(valid)


def check_inputs(config: WhisperEncoderConfig, features, frame_mask, param_dtype) -> np.ndarray:
    """Shape / dtype / mask checks before any compute. -> valid frame count per row (numpy int)."""
    shape = tuple(np.shape(features))
    if len(shape) != 3:
        raise ValueError(f"features must be (batch, mel, frames), got shape {shape}")
    b, mel, frames = shape
    if mel != config.num_mel_bins:
        raise ValueError(f"features have {mel} mel bins, the encoder expects {config.num_mel_bins}")
    if frames != config.frames:
        raise ValueError(
            f"features have {frames} frames; this encoder needs exactly {config.frames} "
            f"(2 * max_source_positions): pad or cut the log-mel to that length"
        )
    if b == 0:
        raise ValueError("empty batch: no audio to encode")
    if not config.cast_input and jnp.dtype(features.dtype) != jnp.dtype(param_dtype):
        raise ValueError(
            f"features dtype {features.dtype} differs from the parameters' {param_dtype}; cast them"
        )
    if frame_mask is None:
        return np.full((b,), frames, np.int64)
    mask = np.asarray(frame_mask)
    if mask.shape != (b, frames):
        raise ValueError(
            f"frame_mask shape {mask.shape} does not match features (batch, frames) = {(b, frames)}"
        )
    lengths = mask.astype(np.int64).sum(-1)
    if (lengths == 0).any():
        raise ValueError(
            f"empty audio: frame_mask rows {np.flatnonzero(lengths == 0).tolist()} have no valid frame"
        )
    return lengths
