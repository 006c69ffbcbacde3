"""Whisper's text decoder (WhisperDecoder + the tied output projection of WhisperForConditionalGeneration).

token + learned position embeddings -> pre-LN layers (causal self-attention, cross-attention over the encoder
output, GELU MLP; k without bias, biased q scaled by head_dim^-0.5 before q.k) -> LayerNorm -> logits against
the token embedding (tied). Spec: shared/spec/whisper_decoder.md.

    cache = init_cache(config, batch, length, params["embed"].dtype)
    cache = with_encoder(params, config, encoder_out, cache)     # cross K/V, computed once
    logits, cache = forward(params, config, ids, cache)          # b vocab at the last position

The self-attention cache is static (slots 0..length-1, written at `cache.index`); the cross K/V stay in the
cache for every later step. `teacher_forced(params, config, ids, encoder_out)` runs without a cache to
keep.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange

from omni_jax.convert.keymap import Rule
from omni_jax.models.audio_common import (
    LN_EPS,
    attention_specs,
    hf_get,
    layer_rules,
    layer_specs,
    norm_rules,
)
from omni_jax.nn.attention import attention, cache_attention
from omni_jax.nn.layers import activation, layer_norm, layer_norm_spec, linear
from omni_jax.nn.params import ParamSpec, stacked

CROSS = (("self_attn", "attn"), ("encoder_attn", "cross"))  # HF attention modules -> ours


@dataclasses.dataclass(frozen=True)
class WhisperDecoderConfig:
    vocab_size: int
    d_model: int
    layers: int
    heads: int
    ffn_dim: int
    max_target_positions: int
    activation: str = "gelu"
    scale_embedding: bool = False

    def __post_init__(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of the {self.heads} decoder heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @classmethod
    def from_hf(cls, cfg: Any) -> WhisperDecoderConfig:
        if hf_get(cfg, "model_type") != "whisper":
            raise ValueError(f"not a Whisper config: model_type {hf_get(cfg, 'model_type')!r}")
        if not hf_get(cfg, "tie_word_embeddings", default=True):
            raise ValueError("only Whisper checkpoints with the output projection tied to the embedding")
        return cls(
            vocab_size=hf_get(cfg, "vocab_size"),
            d_model=hf_get(cfg, "d_model"),
            layers=hf_get(cfg, "decoder_layers"),
            heads=hf_get(cfg, "decoder_attention_heads"),
            ffn_dim=hf_get(cfg, "decoder_ffn_dim"),
            max_target_positions=hf_get(cfg, "max_target_positions"),
            activation=hf_get(cfg, "activation_function", default="gelu"),
            scale_embedding=bool(hf_get(cfg, "scale_embedding", default=False)),
        )


def param_specs(config: WhisperDecoderConfig) -> dict:
    d = config.d_model
    cross = {"cross_norm": layer_norm_spec(d), "cross": attention_specs(d, k_bias=False)}
    return {
        "embed": ParamSpec((config.vocab_size, d), ("vocab", "embed")),
        "pos_embed": ParamSpec((config.max_target_positions, d), (None, "embed")),
        "layers": layer_specs(d, config.ffn_dim, config.layers, k_bias=False) | stacked(cross, config.layers),
        "final_norm": layer_norm_spec(d),
    }


def hf_rules(config: WhisperDecoderConfig, prefix: str = "") -> list[Rule]:
    """Keys relative to the decoder module (`model.decoder.` in full checkpoints); `proj_out.weight` is the
    embedding itself (tied) and has no rule."""
    del config  # the key layout is the same for every size
    p = prefix
    rules = [Rule(f"{p}embed_tokens.weight", "embed"), Rule(f"{p}embed_positions.weight", "pos_embed")]
    return rules + layer_rules(p, k_bias=False, attention=CROSS) + norm_rules(f"{p}layer_norm", "final_norm")


# ---------------------------------------------------------------- cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Cache:
    k: jax.Array  # layers b s h hd (self-attention, slots 0..length-1)
    v: jax.Array
    cross_k: jax.Array  # layers b frames h hd (over the encoder output)
    cross_v: jax.Array
    index: jax.Array  # () int32: next slot to write = position of the next token

    @property
    def length(self) -> int:
        return self.k.shape[2]


def init_cache(
    config: WhisperDecoderConfig, batch: int, length: int, frames: int, dtype=jnp.float32
) -> Cache:
    """An empty cache: `length` self-attention slots (<= max_target_positions), `frames` encoder frames."""
    if not 1 <= length <= config.max_target_positions:
        raise ValueError(
            f"decoder length {length} outside 1..{config.max_target_positions} (max_target_positions)"
        )
    shape = (config.layers, batch, length, config.heads, config.head_dim)
    cross = (config.layers, batch, frames, config.heads, config.head_dim)
    zeros = functools.partial(jnp.zeros, dtype=dtype)
    return Cache(zeros(shape), zeros(shape), zeros(cross), zeros(cross), jnp.zeros((), jnp.int32))


def with_encoder(params: dict, config: WhisperDecoderConfig, encoder_out: jax.Array, cache: Cache) -> Cache:
    """The cache holding every layer's cross-attention K, V of `encoder_out` (b frames d)."""

    def kv(p):  # one layer -> k, v b frames h hd
        return tuple(
            rearrange(linear(p["cross"][n], encoder_out), "b s (h d) -> b s h d", h=config.heads)
            for n in "kv"
        )

    with jax.named_scope("cross_kv"):
        k, v = jax.lax.map(kv, params["layers"])  # layers b frames h hd
    return dataclasses.replace(cache, cross_k=k.astype(cache.k.dtype), cross_v=v.astype(cache.k.dtype))


# ---------------------------------------------------------------- forward


def _heads(p: dict, x: jax.Array, heads: int, scale: float) -> jax.Array:
    """Projection of x (b t d) to b t h hd, times `scale` (after the bias, as HF)."""
    y = linear(p, x) * jnp.asarray(scale, x.dtype)
    return rearrange(y, "b t (h d) -> b t h d", h=heads)


def _layer(p: dict, config: WhisperDecoderConfig, x, carry, layer, cache: Cache):
    """One pre-LN layer on x (b t d); carry = stacked self k, v with this chunk written at cache.index."""
    c, (k_all, v_all) = config, carry
    b, t, _ = x.shape
    scale, zero = c.head_dim**-0.5, jnp.zeros((b,), jnp.int32)
    h = layer_norm(p["attn_norm"], x, LN_EPS)
    q, k, v = (_heads(p["attn"][n], h, c.heads, scale if n == "q" else 1.0) for n in "qkv")
    at = (layer, 0, cache.index, 0, 0)
    k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), at)
    v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), at)
    if t == 1:  # decode: the CPU kernel reads the layer in place
        a = cache_attention(q, k_all, v_all, layer, zero, cache.index + 1, scale=1.0)
    else:
        causal = jnp.arange(cache.length)[None, :] <= cache.index + jnp.arange(t)[:, None]  # t s
        a = attention(q, k_all[layer].astype(q.dtype), v_all[layer].astype(q.dtype), mask=causal, scale=1.0)
    x = x + linear(p["attn"]["o"], rearrange(a, "b t h d -> b t (h d)"))
    q = _heads(p["cross"]["q"], layer_norm(p["cross_norm"], x, LN_EPS), c.heads, scale)
    frames = cache.cross_k.shape[2]
    if t == 1:
        a = cache_attention(q, cache.cross_k, cache.cross_v, layer, zero, frames, scale=1.0)
    else:
        a = attention(
            q, cache.cross_k[layer].astype(q.dtype), cache.cross_v[layer].astype(q.dtype), scale=1.0
        )
    x = x + linear(p["cross"]["o"], rearrange(a, "b t h d -> b t (h d)"))
    h = activation(c.activation)(linear(p["fc1"], layer_norm(p["mlp_norm"], x, LN_EPS)))
    return x + linear(p["fc2"], h), (k_all, v_all)


OUTPUTS = ("last", "logits", "hidden")


def forward(
    params: dict, config: WhisperDecoderConfig, ids: jax.Array, cache: Cache, *, output: str = "last"
) -> tuple[jax.Array, Cache]:
    """Token ids b t at positions cache.index.. (the cross K/V already in the cache) -> the cache with the
    chunk written and, in the parameters' dtype, `output`: "last" logits b vocab at the last position,
    "logits" b t vocab, or "hidden" (final-normed) b t d."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    c = config
    b, t = ids.shape
    with jax.named_scope("embed"):
        x = jnp.take(params["embed"], ids, axis=0)
        if c.scale_embedding:
            x = x * jnp.asarray(c.d_model**0.5, x.dtype)
        x = x + jax.lax.dynamic_slice_in_dim(params["pos_embed"], cache.index, t).astype(x.dtype)

    def body(carry, xs):
        x, kv = carry
        p, layer = xs
        x, kv = _layer(p, c, x, kv, layer, cache)
        return (x, kv), None

    with jax.named_scope("layers"):
        (x, (k, v)), _ = jax.lax.scan(body, (x, (cache.k, cache.v)), (params["layers"], jnp.arange(c.layers)))
    cache = dataclasses.replace(cache, k=k, v=v, index=cache.index + t)
    h = layer_norm(params["final_norm"], x[:, -1] if output == "last" else x, LN_EPS)
    if output == "hidden":
        return h, cache
    with jax.named_scope("unembed"):
        return jnp.matmul(h, params["embed"].astype(h.dtype).T), cache


@functools.partial(jax.jit, static_argnums=(1, 4))
def teacher_forced(
    params: dict, config: WhisperDecoderConfig, ids: jax.Array, encoder_out: jax.Array, output: str = "logits"
) -> jax.Array:
    """`output` ("logits" b t vocab or "hidden" b t d) of decoder ids b t (positions 0..t-1) over
    `encoder_out` b frames d, without a cache to keep."""
    b, t = ids.shape
    cache = init_cache(config, b, t, encoder_out.shape[1], params["embed"].dtype)
    cache = with_encoder(params, config, encoder_out, cache)
    return forward(params, config, ids, cache, output=output)[0]
