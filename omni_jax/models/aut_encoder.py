"""Qwen3-Omni AuT audio encoder (Qwen3OmniMoeAudioEncoder) with exact block-diagonal windowed attention.

Layout: each audio's frames are cut into 100-frame chunks (3 stride-2 conv2d -> 13 tokens each, positions
restarting per chunk); an audio's valid tokens are then a prefix of its chunk tokens, and attention windows
(n_window_infer // 100 chunks) are consecutive blocks of that sequence. So tokens stay in a static
(batch, windows * window) layout: windowed attention is a reshape, not a T x T mask, and shapes depend only on
the number of windows (the length bucket).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.convert.keymap import CONV2D, Rule
from omni_jax.models.audio_common import (
    LN_EPS,
    encoder_stack,
    hf_get,
    layer_rules,
    layer_specs,
    linear_rules,
    norm_rules,
    sinusoids,
    sub_config,
)
from omni_jax.nn.attention import windowed_attention
from omni_jax.nn.layers import (
    activation,
    conv2d,
    conv2d_spec,
    layer_norm,
    layer_norm_spec,
    linear,
    linear_spec,
)

CHUNK = 100  # mel frames per conv chunk (2 * n_window; transformers hard-codes the 13 tokens it yields)
CHUNK_TOKENS = 13


def audio_token_count(frames):
    """Audio tokens for `frames` mel frames (int, numpy or jax array); transformers' formula, exactly."""
    rem = frames % CHUNK
    t = (rem - 1) // 2 + 1
    return ((t - 1) // 2 + 1 - 1) // 2 + 1 + (frames // CHUNK) * CHUNK_TOKENS


def _halve(n: int) -> int:
    return (n + 1) // 2  # conv k3 s2 p1 output length


@dataclasses.dataclass(frozen=True)
class AuTConfig:
    num_mel_bins: int
    d_model: int
    layers: int
    heads: int
    ffn_dim: int
    conv_channels: int  # downsample_hidden_size
    output_dim: int
    window_chunks: int  # n_window_infer // 100: conv chunks per attention window
    activation: str = "gelu"

    @property
    def window(self) -> int:
        """Tokens per attention window."""
        return CHUNK_TOKENS * self.window_chunks

    @property
    def window_frames(self) -> int:
        return CHUNK * self.window_chunks

    @property
    def conv_features(self) -> int:
        """conv_out input width: channels x mel bins after three halvings."""
        return self.conv_channels * _halve(_halve(_halve(self.num_mel_bins)))

    @classmethod
    def from_hf(cls, cfg: Any) -> AuTConfig:
        cfg = sub_config(sub_config(cfg, "thinker_config"), "audio_config")
        n_window, n_window_infer = hf_get(cfg, "n_window"), hf_get(cfg, "n_window_infer")
        if n_window != CHUNK // 2:
            raise ValueError(
                f"n_window must be {CHUNK // 2}: transformers hard-codes 13 tokens per chunk (got {n_window})"
            )
        if n_window_infer < CHUNK:
            raise ValueError(f"n_window_infer must be >= {CHUNK} frames, got {n_window_infer}")
        return cls(
            num_mel_bins=hf_get(cfg, "num_mel_bins"),
            d_model=hf_get(cfg, "d_model"),
            layers=hf_get(cfg, "encoder_layers"),
            heads=hf_get(cfg, "encoder_attention_heads"),
            ffn_dim=hf_get(cfg, "encoder_ffn_dim"),
            conv_channels=hf_get(cfg, "downsample_hidden_size"),
            output_dim=hf_get(cfg, "output_dim"),
            window_chunks=n_window_infer // CHUNK,
            activation=hf_get(cfg, "activation_function", default="gelu"),
        )


def param_specs(config: AuTConfig) -> dict:
    c, d = config.conv_channels, config.d_model
    return {
        "conv1": conv2d_spec(1, c, (3, 3)),
        "conv2": conv2d_spec(c, c, (3, 3)),
        "conv3": conv2d_spec(c, c, (3, 3)),
        "conv_out": linear_spec(config.conv_features, d, bias=False),
        "layers": layer_specs(d, config.ffn_dim, config.layers, k_bias=True),
        "ln_post": layer_norm_spec(d),
        "proj1": linear_spec(d, d),
        "proj2": linear_spec(d, config.output_dim),
    }


def hf_rules(config: AuTConfig, prefix: str = "") -> list[Rule]:
    """Keys relative to the encoder module (`thinker.audio_tower.` on the hub)."""
    del config
    p = prefix
    rules = []
    for i in (1, 2, 3):
        rules += [
            Rule(f"{p}conv2d{i}.weight", f"conv{i}/kernel", CONV2D),
            Rule(f"{p}conv2d{i}.bias", f"conv{i}/bias"),
        ]
    rules += linear_rules(f"{p}conv_out", "conv_out", bias=False)
    rules += layer_rules(p, k_bias=True) + norm_rules(f"{p}ln_post", "ln_post")
    return rules + linear_rules(f"{p}proj1", "proj1") + linear_rules(f"{p}proj2", "proj2")


# ---------------------------------------------------------------- forward


def _conv_stack(params: dict, x: jax.Array, pad_len: jax.Array) -> jax.Array:
    """Three conv2d (k3 s2 p1) + GELU over 100-frame chunks. x: n mel 100 1 (NHWC, H = mel, W = time).
    transformers zero-pads every chunk to `pad_len` (the longest chunk of the call) only: time positions a
    shorter padding would not have are zeroed before the next conv. -> n mel/8 13 c."""
    width = pad_len
    for i in (1, 2, 3):
        if i > 1:
            width = (width + 1) // 2
            x = jnp.where((jnp.arange(x.shape[2]) < width)[None, None, :, None], x, 0)
        x = jax.nn.gelu(
            conv2d(params[f"conv{i}"], x, stride=(2, 2), padding=((1, 1), (1, 1))), approximate=False
        )
    return x


@functools.partial(jax.jit, static_argnums=1)
def forward(
    params: dict, config: AuTConfig, features: jax.Array, lengths: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """features: b mel T with T a multiple of window_frames; lengths: b valid frames (>= 1).
    -> (out b n output_dim, valid b n) with n = T / 100 * 13; audio i's tokens are the first
    audio_token_count(lengths[i]) rows."""
    b, mel, frames = features.shape
    chunks = frames // CHUNK
    x = jnp.where(jnp.arange(frames) < lengths[:, None, None], features, 0)  # frames past the audio are zeros
    x = x.reshape(b, mel, chunks, CHUNK).transpose(0, 2, 1, 3).reshape(b * chunks, mel, CHUNK, 1)
    x = _conv_stack(params, x.astype(params["conv1"]["kernel"].dtype), jnp.minimum(lengths.max(), CHUNK))
    n, f, t, c = x.shape  # t = 13
    x = linear(params["conv_out"], x.transpose(0, 2, 3, 1).reshape(n, t, c * f))  # channel-major flatten
    x = x + jnp.asarray(sinusoids(t, config.d_model), x.dtype)  # positions restart in every chunk
    x = x.reshape(b, chunks * t, config.d_model)
    valid = jnp.arange(chunks * t) < audio_token_count(lengths)[:, None]

    def attend(q, k, v, *, scale):
        return windowed_attention(q, k, v, window=config.window, key_mask=valid, scale=scale)

    x = encoder_stack(
        params["layers"], x, attend, heads=config.heads, act=config.activation, scale_q_first=False
    )
    x = linear(params["proj1"], layer_norm(params["ln_post"], x, LN_EPS))
    return linear(params["proj2"], activation(config.activation)(x)), valid


def bucket_frames(config: AuTConfig, max_frames: int) -> int:
    """Padded frame count of a batch whose longest audio has `max_frames`: a whole number of windows."""
    return -(-max_frames // config.window_frames) * config.window_frames


def encode(params: dict, config: AuTConfig, features, lengths) -> tuple[jax.Array, jax.Array]:
    """Validated entry point. features: b mel T (frames past each length are ignored); lengths: b valid
    frames. Pads time to the length bucket (whole windows), so lengths in one bucket share one compilation.
    The batch is transformers' "call": its longest chunk sets the conv zero padding of every chunk.
    -> (out b n output_dim, valid b n)."""
    lengths = check_inputs(config, features, lengths)
    frames = bucket_frames(config, int(lengths.max()))
    feats = np.asarray(features)[:, :, :frames]
    feats = np.pad(feats, ((0, 0), (0, 0), (0, frames - feats.shape[2])))
    return forward(params, config, jnp.asarray(feats), jnp.asarray(lengths, jnp.int32))


def check_inputs(config: AuTConfig, features, lengths) -> np.ndarray:
    shape = tuple(np.shape(features))
    if len(shape) != 3:
        raise ValueError(f"features must be (batch, mel, frames), got shape {shape}")
    if shape[1] != config.num_mel_bins:
        raise ValueError(f"features have {shape[1]} mel bins, the encoder expects {config.num_mel_bins}")
    lengths = np.asarray(lengths)
    if lengths.shape != (shape[0],) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(
            f"lengths must be integers of shape ({shape[0]},), got {lengths.dtype} {lengths.shape}"
        )
    if shape[0] == 0:
        raise ValueError("empty batch: no audio to encode")
    if (lengths < 1).any():
        raise ValueError(f"empty audio: rows {np.flatnonzero(lengths < 1).tolist()} have no frames")
    if (lengths > shape[2]).any():
        raise ValueError(f"lengths {lengths.tolist()} exceed the {shape[2]} frames of the features")
    return lengths.astype(np.int64)


def pack(out: jax.Array, valid: jax.Array) -> np.ndarray:
    """Valid tokens of every audio, concatenated in order (transformers' output layout). -> N d."""
    return np.asarray(out)[np.asarray(valid)]
