"""Pieces shared by the audio encoders: config reading, sinusoid tables, the pre-LN encoder layer stack."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.convert.keymap import LINEAR, Rule, linear_rules  # noqa: F401 (re-exported)
from omni_jax.nn.attention import blocked_attention
from omni_jax.nn.layers import activation, layer_norm, layer_norm_spec, linear, linear_spec
from omni_jax.nn.packed import pack_kernels
from omni_jax.nn.params import stacked, unstack

LN_EPS = 1e-5  # every LayerNorm of these encoders (torch default; configs do not set it)

Attend = Callable[..., jax.Array]  # (q, k, v, *, scale) -> out, all b t h d


def hf_get(cfg: Any, *names: str, default: Any = None) -> Any:
    """The first of `names` present on a transformers config object or dict (aliases differ per model)."""
    for name in names:
        value = cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)
        if value is not None:
            return value
    if default is None:
        raise ValueError(f"config has none of the fields {names}")
    return default


def sub_config(cfg: Any, name: str) -> Any:
    """cfg.<name> (e.g. audio_config) when cfg is a composite model config, else cfg itself."""
    sub = cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)
    return cfg if sub is None else sub


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """[sin | cos] table (length, channels), inc = ln(max_timescale) / (channels/2 - 1), float32 as HF."""
    if channels % 2:
        raise ValueError(f"sinusoid channels must be even, got {channels}")
    inc = np.float32(np.log(max_timescale) / (channels // 2 - 1))
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32))
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


# ---------------------------------------------------------------- encoder layers


def attention_specs(d: int, *, k_bias: bool) -> dict:
    """Biased q, v, o projections and k (biased when k_bias) of d -> d attention."""
    attn = {n: linear_spec(d, d, bias=n != "k" or k_bias, axes=("embed", "heads")) for n in "qkv"}
    attn["o"] = linear_spec(d, d, axes=("heads", "embed"))
    return attn


def layer_specs(d: int, ffn: int, n_layers: int, *, k_bias: bool) -> dict:
    """Stacked pre-LN layers: attention (q, k, v, o) and a two-layer MLP."""
    layer = {
        "attn_norm": layer_norm_spec(d),
        "attn": attention_specs(d, k_bias=k_bias),
        "mlp_norm": layer_norm_spec(d),
        "fc1": linear_spec(d, ffn, axes=("embed", "mlp")),
        "fc2": linear_spec(ffn, d, axes=("mlp", "embed")),
    }
    return stacked(layer, n_layers)


SELF_ATTENTION = (("self_attn", "attn"),)  # HF attention module -> ours


def layer_rules(
    prefix: str, *, k_bias: bool, attention: tuple[tuple[str, str], ...] = SELF_ATTENTION
) -> list[Rule]:
    """HF `layers.{i}.*` keys of a Whisper-style layer <-> `layers/*` paths; `attention` pairs each HF
    attention module with ours (its LayerNorm is `<hf>_layer_norm` <-> `<ours>_norm`)."""
    p = f"{prefix}layers.{{layer}}."
    pairs = [(f"{hf}.{n}_proj", f"{ours}/{n}") for hf, ours in attention for n in "qkv"]
    pairs += [(f"{hf}.out_proj", f"{ours}/o") for hf, ours in attention] + [("fc1", "fc1"), ("fc2", "fc2")]
    rules = [Rule(f"{p}{hf}.weight", f"layers/{ours}/kernel", LINEAR) for hf, ours in pairs]
    rules += [
        Rule(f"{p}{hf}.bias", f"layers/{ours}/bias")
        for hf, ours in pairs
        if not ours.endswith("/k") or k_bias
    ]
    norms = [(f"{hf}_layer_norm", f"{ours}_norm") for hf, ours in attention]
    for hf, ours in (*norms, ("final_layer_norm", "mlp_norm")):
        rules += norm_rules(f"{p}{hf}", f"layers/{ours}")
    return rules


def norm_rules(hf: str, ours: str) -> list[Rule]:
    return [Rule(f"{hf}.weight", f"{ours}/scale"), Rule(f"{hf}.bias", f"{ours}/bias")]


def masked_attend(key_mask: jax.Array | None) -> Attend:
    """Full attention over a sequence (blocked over queries), keys masked by key_mask (b t, True = valid)."""
    return lambda q, k, v, *, scale: blocked_attention(q, k, v, key_mask=key_mask, scale=scale)


def encoder_layer(
    p: dict, x: jax.Array, attend: Attend, *, heads: int, act: str, scale_q_first: bool
) -> jax.Array:
    """Pre-LN block. scale_q_first: Whisper scales the biased query by head_dim^-0.5 before q.k (scaling 1.0
    in the attention call); AuT scales the logits. x: b t d -> b t d."""
    b, t, d = x.shape
    h = layer_norm(p["attn_norm"], x, LN_EPS)
    q, k, v = (linear(p["attn"][n], h).reshape(b, t, heads, d // heads) for n in "qkv")
    scale = (d // heads) ** -0.5
    if scale_q_first:
        q, scale = q * jnp.asarray(scale, q.dtype), 1.0
    o = attend(q, k, v, scale=scale).reshape(b, t, d)
    x = x + linear(p["attn"]["o"], o)
    h = activation(act)(linear(p["fc1"], layer_norm(p["mlp_norm"], x, LN_EPS)))
    x = x + linear(p["fc2"], h)
    if x.dtype == jnp.float16:
        bound = float(jnp.finfo(jnp.float16).max) - 1000
        x = jnp.clip(x, -bound, bound)
    return x


def encoder_stack(layers: dict | tuple, x: jax.Array, attend: Attend, **kw) -> jax.Array:
    """All layers: stacked under lax.scan, or unrolled when `layers` is a tuple of per-layer trees
    (`unrolled_packed`). x: b t d."""
    if isinstance(layers, tuple):
        for p in layers:
            x = encoder_layer(p, x, attend, **kw)
        return x

    def body(h, p):
        return encoder_layer(p, h, attend, **kw), None

    return jax.lax.scan(body, x, layers)[0]


def unrolled_packed(layers: dict) -> tuple:
    """Stacked layers as a tuple of per-layer trees with packed linears (`nn.packed`): on one CPU device XLA
    then neither copies each layer's slice of the stack nor repacks the weights at every call."""
    return pack_kernels(unstack(layers))
