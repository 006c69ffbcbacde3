"""Qwen3-Omni Code2Wav (`Qwen3OmniMoeCode2Wav`): codec codes (16 per 80-ms frame) -> 24 kHz waveform.

codes b q n -> mean of q embeddings from one flattened table -> sliding-window causal pre-transformer ->
upsampler (transposed conv k = s = r, ConvNeXt block) per ratio -> conv -> decoder blocks (SnakeBeta,
transposed conv k = 2r s = r trimmed by r on both sides, three dilated residual units) -> SnakeBeta -> conv ->
clamp to [-1, 1]. Channels-last throughout.

Every stage is written as a streaming step: it takes new time steps plus the left context it carried (the
last inputs of each causal conv, the last input frame of each decoder transposed conv, the attention window's
keys and values) and returns new outputs plus the next context. The initial context is zero for convs (HF's
causal zero padding) and empty for transposed convs (HF's left trim), so the one-shot decode is one step from
the initial state, and all three modes (`code2wav`, `chunked_decode`, `stream_init`/`stream_step`) share it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.convert.keymap import CONV1D, CONV_TRANSPOSE1D, Rule, linear_rules
from omni_jax.models import decoder
from omni_jax.models.audio_common import hf_get, sub_config
from omni_jax.nn.attention import attention
from omni_jax.nn.layers import (
    activation,
    conv1d,
    conv1d_spec,
    conv_transpose1d,
    conv_transpose1d_spec,
    layer_norm,
    layer_norm_spec,
    linear,
    linear_spec,
    polyphase,
    rms_norm,
    rms_norm_spec,
    snake_beta,
    snake_beta_spec,
)
from omni_jax.nn.moe import gated_mlp, gated_mlp_spec
from omni_jax.nn.packed import pack_kernels
from omni_jax.nn.params import ParamSpec, stacked
from omni_jax.nn.rope import apply_rope, rope_angles, rope_cos_sin, rope_inv_freq

SAMPLE_RATE = 24000
KERNEL = 7  # every causal conv of Code2Wav except the residual units' 1x1
DILATIONS = (1, 3, 9)  # residual units of each decoder block
CONVNEXT_EPS = 1e-6
CONVNEXT_GAMMA = 1e-6  # init of the ConvNeXt gamma
_HF_NAMES = {
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Defaults are the released Qwen3-Omni-30B-A3B code2wav_config."""

    codebook_size: int = 2048
    num_quantizers: int = 16
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_layers: int = 8
    num_heads: int = 16
    num_kv_heads: int = 16
    head_dim: int = 64
    sliding_window: int = 72
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    attention_bias: bool = False
    hidden_act: str = "silu"
    layer_scale_initial_scale: float = 0.01
    upsampling_ratios: tuple[int, ...] = (2, 2)
    upsample_rates: tuple[int, ...] = (8, 5, 4, 3)
    decoder_dim: int = 1536

    @classmethod
    def from_hf(cls, hf_config: Any) -> Config:
        """From a Qwen3OmniMoeCode2WavConfig, a full Qwen3OmniMoeConfig, or either as a dict."""
        cfg = sub_config(hf_config, "code2wav_config")
        model_type = hf_get(cfg, "model_type", default="")  # "" in sub-configs saved by transformers
        if model_type not in ("", "qwen3_omni_moe_code2wav"):
            raise ValueError(f"not a Code2Wav config: model_type {model_type!r}")
        rope = hf_get(cfg, "rope_parameters", default={})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"Code2Wav supports only default RoPE, got rope_type {rope['rope_type']!r}")
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        values = {name: hf_get(cfg, _HF_NAMES.get(name, name), default=d) for name, d in fields.items()}
        values["head_dim"] = hf_get(cfg, "head_dim", default=values["hidden_size"] // values["num_heads"])
        values["rope_theta"] = float(rope.get("rope_theta", values["rope_theta"]))
        tuples = ("upsampling_ratios", "upsample_rates")
        return cls(**values | {name: tuple(values[name]) for name in tuples})

    @property
    def total_upsample(self) -> int:
        """Samples per frame (1920 released: 12.5 frames per second at 24 kHz)."""
        return math.prod(self.upsampling_ratios + self.upsample_rates)

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        """Channels entering each decoder block, then after the last one (1536 ... 96 released)."""
        return tuple(self.decoder_dim // 2**i for i in range(len(self.upsample_rates) + 1))


def output_length(config: Config, frames: int) -> int:
    """Samples `code2wav` returns for `frames` frames: each decoder block loses one input step of look-ahead,
    1920 * frames - 555 released."""
    n = frames * math.prod(config.upsampling_ratios)
    for rate in config.upsample_rates:
        n = (n - 1) * rate
    return n


# ---------------------------------------------------------------- parameters


def param_specs(config: Config) -> dict:
    d, hd = config.hidden_size, config.head_dim
    bias = config.attention_bias
    attn = {n: linear_spec(d, h * hd, bias=bias, axes=("embed", "heads")) for n, h in _qkv_heads(config)}
    attn["o"] = linear_spec(config.num_heads * hd, d, bias=bias, axes=("heads", "embed"))
    layer = {
        "input_norm": rms_norm_spec(d),
        "attn": attn,
        "attn_scale": _vector(d, config.layer_scale_initial_scale),
        "post_norm": rms_norm_spec(d),
        "mlp": gated_mlp_spec(d, config.intermediate_size),
        "mlp_scale": _vector(d, config.layer_scale_initial_scale),
    }
    upsample = {
        str(i): {
            "tconv": conv_transpose1d_spec(d, d, r),
            "dwconv": conv1d_spec(d, d, KERNEL, groups=d),
            "norm": layer_norm_spec(d),
            "pwconv1": linear_spec(d, 4 * d),
            "pwconv2": linear_spec(4 * d, d, axes=("mlp", "embed")),
            "gamma": _vector(d, CONVNEXT_GAMMA),
        }
        for i, r in enumerate(config.upsampling_ratios)
    }
    ch = config.decoder_channels
    blocks = {
        str(i): {
            "snake": snake_beta_spec(ch[i]),
            "tconv": conv_transpose1d_spec(ch[i], ch[i + 1], 2 * r),
            "units": {str(u): _unit_specs(ch[i + 1]) for u in range(len(DILATIONS))},
        }
        for i, r in enumerate(config.upsample_rates)
    }
    return {
        "code_embedding": ParamSpec((config.codebook_size * config.num_quantizers, d), ("vocab", "embed")),
        "pre_transformer": {"layers": stacked(layer, config.num_layers), "norm": rms_norm_spec(d)},
        "upsample": upsample,
        "decoder": {
            "in_conv": conv1d_spec(d, ch[0], KERNEL),
            "blocks": blocks,
            "out_snake": snake_beta_spec(ch[-1]),
            "out_conv": conv1d_spec(ch[-1], 1, KERNEL),
        },
    }


def _qkv_heads(config: Config) -> tuple[tuple[str, int], ...]:
    return (("q", config.num_heads), ("k", config.num_kv_heads), ("v", config.num_kv_heads))


def _vector(d: int, value: float) -> ParamSpec:
    return ParamSpec((d,), ("embed",), init="constant", scale=value)


def _unit_specs(c: int) -> dict:
    return {
        "act1": snake_beta_spec(c),
        "conv1": conv1d_spec(c, c, KERNEL),
        "act2": snake_beta_spec(c),
        "conv2": conv1d_spec(c, c, 1),
    }


def hf_rules(config: Config, prefix: str = "") -> list[Rule]:
    """Key map of a Qwen3OmniMoeCode2Wav state dict; prefix "code2wav." for full Qwen3-Omni checkpoints."""
    layer = f"{prefix}pre_transformer.layers.{{layer}}."
    rules = [
        Rule(f"{prefix}code_embedding.weight", "code_embedding"),
        Rule(f"{prefix}pre_transformer.norm.weight", "pre_transformer/norm/scale"),
        Rule(layer + "input_layernorm.weight", "pre_transformer/layers/input_norm/scale"),
        Rule(layer + "post_attention_layernorm.weight", "pre_transformer/layers/post_norm/scale"),
        Rule(layer + "self_attn_layer_scale.scale", "pre_transformer/layers/attn_scale"),
        Rule(layer + "mlp_layer_scale.scale", "pre_transformer/layers/mlp_scale"),
    ]
    for n in ("q", "k", "v", "o"):
        rules += linear_rules(
            f"{layer}self_attn.{n}_proj", f"pre_transformer/layers/attn/{n}", bias=config.attention_bias
        )
    for n in ("gate", "up", "down"):
        rules += linear_rules(f"{layer}mlp.{n}_proj", f"pre_transformer/layers/mlp/{n}", bias=False)
    up, upj = f"{prefix}upsample.{{s}}.", "upsample/{s}/"
    rules += [
        *_conv_rules(up + "0.conv", upj + "tconv", CONV_TRANSPOSE1D),
        *_conv_rules(up + "1.dwconv.conv", upj + "dwconv", CONV1D),
        Rule(up + "1.norm.weight", upj + "norm/scale"),
        Rule(up + "1.norm.bias", upj + "norm/bias"),
        *linear_rules(up + "1.pwconv1", upj + "pwconv1", bias=True),
        *linear_rules(up + "1.pwconv2", upj + "pwconv2", bias=True),
        Rule(up + "1.gamma", upj + "gamma"),
    ]
    dec, n_blocks = f"{prefix}decoder.", len(config.upsample_rates)
    rules += _conv_rules(dec + "0.conv", "decoder/in_conv", CONV1D)
    for i in range(n_blocks):
        block, blockj = f"{dec}{i + 1}.block.", f"decoder/blocks/{i}/"
        rules += _snake_rules(block + "0", blockj + "snake")
        rules += _conv_rules(block + "1.conv", blockj + "tconv", CONV_TRANSPOSE1D)
        for u in range(len(DILATIONS)):
            unit, unitj = f"{block}{u + 2}.", f"{blockj}units/{u}/"
            rules += _snake_rules(unit + "act1", unitj + "act1") + _snake_rules(unit + "act2", unitj + "act2")
            rules += _conv_rules(unit + "conv1.conv", unitj + "conv1", CONV1D)
            rules += _conv_rules(unit + "conv2.conv", unitj + "conv2", CONV1D)
    rules += _snake_rules(f"{dec}{n_blocks + 1}", "decoder/out_snake")
    rules += _conv_rules(f"{dec}{n_blocks + 2}.conv", "decoder/out_conv", CONV1D)
    return rules


def _conv_rules(hf: str, jax_path: str, transform) -> list[Rule]:
    return [Rule(f"{hf}.weight", f"{jax_path}/kernel", transform), Rule(f"{hf}.bias", f"{jax_path}/bias")]


def _snake_rules(hf: str, jax_path: str) -> list[Rule]:
    return [Rule(f"{hf}.{n}", f"{jax_path}/{n}") for n in ("alpha", "beta")]


# ---------------------------------------------------------------- streaming state


def stream_init(config: Config, batch: int = 1, dtype: Any = jnp.float32) -> dict:
    """State before the first frame: position 0, an empty attention window, zero context for every causal conv
    (HF's zero padding) and none for the transposed convs (HF's left trim)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")

    def zeros(steps, channels):  # b steps c
        return jnp.zeros((batch, steps, channels), dtype)

    d, ch = config.hidden_size, config.decoder_channels
    kv = jnp.zeros(
        (config.num_layers, batch, config.sliding_window - 1, config.num_kv_heads, config.head_dim), dtype
    )
    blocks = {
        str(i): {
            "tconv": zeros(0, ch[i]),
            "units": {str(u): zeros((KERNEL - 1) * dil, ch[i + 1]) for u, dil in enumerate(DILATIONS)},
        }
        for i in range(len(config.upsample_rates))
    }
    return {
        "pos": jnp.zeros((), jnp.int32),
        "attn": {"k": kv, "v": kv},
        "upsample": {
            str(i): {"tconv": zeros(0, d), "dwconv": zeros(KERNEL - 1, d)}
            for i in range(len(config.upsampling_ratios))
        },
        "decoder": {
            "in_conv": zeros(KERNEL - 1, d),
            "blocks": blocks,
            "out_conv": zeros(KERNEL - 1, ch[-1]),
        },
    }


# ---------------------------------------------------------------- forward pieces


def _embed(params: dict, config: Config, codes: jax.Array) -> jax.Array:
    """codes b q n -> b n d: the MEAN over quantizers of rows `codes[:, q] + q * codebook_size` of one
    flattened table. There is no separate residual-VQ codebook set (no projections, no sum)."""
    offsets = jnp.arange(config.num_quantizers, dtype=codes.dtype) * config.codebook_size
    return jnp.take(params["code_embedding"], codes + offsets[None, :, None], axis=0).mean(axis=1)


def _pre_transformer(
    p: dict, config: Config, x: jax.Array, kv: dict, pos: jax.Array
) -> tuple[jax.Array, dict]:
    """x: b m d, new frames at positions pos.. ; kv: keys/values (layers b w-1 kh hd) of the previous w-1."""
    m, window = x.shape[1], config.sliding_window
    q_pos = pos + jnp.arange(m)
    k_pos = pos - (window - 1) + jnp.arange(window - 1 + m)
    # causal sliding window (HF: i - w < j <= i); keys before position 0 are the empty initial window
    mask = (k_pos[None] >= 0) & (k_pos[None] <= q_pos[:, None]) & (k_pos[None] > q_pos[:, None] - window)
    cos, sin = rope_cos_sin(
        rope_angles(q_pos[None], rope_inv_freq(config.head_dim, config.rope_theta)), x.dtype
    )

    def layer(h, layer_in):
        lp, k_cache, v_cache = layer_in
        h, k, v = _layer(lp, config, h, k_cache, v_cache, (cos, sin), mask[None, None])
        return h, (k, v)

    if isinstance(p["layers"], tuple):  # `cpu_layout`: unrolled, no per-call copy of each layer's weights
        new = []
        for i, lp in enumerate(p["layers"]):
            x, kv_i = layer(x, (lp, kv["k"][i], kv["v"][i]))
            new.append(kv_i)
        k, v = (jnp.stack(a) for a in zip(*new, strict=True))
    else:
        x, (k, v) = jax.lax.scan(layer, x, (p["layers"], kv["k"], kv["v"]))
    return rms_norm(p["norm"], x, config.rms_norm_eps), {"k": k, "v": v}


def cpu_layout(params: dict, config: Config) -> dict:
    """The parameters laid out for float32 inference on one CPU device, as the Qwen3-Omni pipeline decodes:
    the pre-transformer's layers unrolled and its linears and the ConvNeXt linears packed (a stream reads
    every weight at each step; `decoder.cpu_layout`), and each transposed conv's kernel in the polyphase
    layout it runs in, arranged once instead of at every call."""
    upsample = {}
    for i, ratio in enumerate(config.upsampling_ratios):
        p = params["upsample"][str(i)]
        linears = pack_kernels({"pwconv1": p["pwconv1"], "pwconv2": p["pwconv2"]})
        upsample[str(i)] = _polyphase_tconv({**p, **linears}, ratio)
    blocks = {
        str(i): _polyphase_tconv(params["decoder"]["blocks"][str(i)], rate)
        for i, rate in enumerate(config.upsample_rates)
    }
    pre = decoder.unstack_layers(params["pre_transformer"])
    return {
        **params,
        "pre_transformer": {**pre, "layers": pack_kernels(pre["layers"])},
        "upsample": upsample,
        "decoder": {**params["decoder"], "blocks": blocks},
    }


def _polyphase(p: dict, stride: int) -> dict:
    return {**p, "kernel": polyphase(p["kernel"], stride)}


def _polyphase_tconv(block: dict, stride: int) -> dict:
    return {**block, "tconv": _polyphase(block["tconv"], stride)}


def _layer(p, config, x, k_cache, v_cache, rope, mask):  # x: b m d; caches: b w-1 kh hd
    b, m, _ = x.shape
    h = rms_norm(p["input_norm"], x, config.rms_norm_eps)
    q, k, v = (
        linear(p["attn"][n], h).reshape(b, m, heads, config.head_dim) for n, heads in _qkv_heads(config)
    )
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    keys, values = jnp.concatenate([k_cache, k], axis=1), jnp.concatenate([v_cache, v], axis=1)
    a = attention(q, keys, values, mask=mask, scale=config.head_dim**-0.5).reshape(b, m, -1)
    x = x + p["attn_scale"] * linear(p["attn"]["o"], a)
    h = rms_norm(p["post_norm"], x, config.rms_norm_eps)
    h = gated_mlp(p["mlp"], h, config.hidden_act)
    keep = keys.shape[1] - k_cache.shape[1]
    return x + p["mlp_scale"] * h, keys[:, keep:], values[:, keep:]


def _causal_conv(p: dict, x: jax.Array, ctx: jax.Array, *, dilation: int = 1, groups: int = 1):
    """HF CausalConvNet (stride 1) on new steps x: b t c given the carried last (K-1)*dilation inputs ctx.
    -> (b t o, next ctx)."""
    full = jnp.concatenate([ctx, x], axis=1)
    y = conv1d(p, full, dilation=dilation, groups=groups)
    return y, full[:, full.shape[1] - ctx.shape[1] :]


def _trans_conv(p: dict, x: jax.Array, ctx: jax.Array, stride: int, kernel: int):
    """HF CausalTransConvNet (kernel K = taps * stride, trimmed by K - stride at both ends) on new steps x
    given ctx, the last taps - 1 inputs (none before the first step). -> (b (ctx+t-taps+1)*stride o, ctx)."""
    full = jnp.concatenate([ctx, x], axis=1)
    y = conv_transpose1d(p, full, stride=stride)
    trim = kernel - stride
    return y[:, trim : y.shape[1] - trim], full[:, full.shape[1] - (kernel // stride - 1) :]


def _upsample_stage(p: dict, x: jax.Array, ctx: dict, ratio: int):
    """Transposed conv (k = s = ratio) then a ConvNeXt block. x: b t d -> b t*ratio d."""
    x, tconv = _trans_conv(p["tconv"], x, ctx["tconv"], ratio, kernel=ratio)
    h, dwconv = _causal_conv(p["dwconv"], x, ctx["dwconv"], groups=x.shape[-1])
    h = layer_norm(p["norm"], h, CONVNEXT_EPS)
    h = linear(p["pwconv2"], activation("gelu")(linear(p["pwconv1"], h)))
    return x + p["gamma"] * h, {"tconv": tconv, "dwconv": dwconv}


def _decoder_block(p: dict, x: jax.Array, ctx: dict, rate: int):
    """SnakeBeta, transposed conv (k = 2 rate, s = rate), three dilated residual units. b t c -> b t' c/2."""
    x, tconv = _trans_conv(p["tconv"], snake_beta(p["snake"], x), ctx["tconv"], rate, kernel=2 * rate)
    units = {}
    for u, dilation in enumerate(DILATIONS):
        unit = p["units"][str(u)]
        h, units[str(u)] = _causal_conv(
            unit["conv1"], snake_beta(unit["act1"], x), ctx["units"][str(u)], dilation=dilation
        )
        x = x + conv1d(unit["conv2"], snake_beta(unit["act2"], h))
    return x, {"tconv": tconv, "units": units}


def _step(params: dict, config: Config, state: dict, codes: jax.Array) -> tuple[dict, jax.Array]:
    """codes b q m (new frames) -> (next state, new samples b t)."""
    x = _embed(params, config, codes)
    x, attn = _pre_transformer(params["pre_transformer"], config, x, state["attn"], state["pos"])
    upsample = {}
    for i, ratio in enumerate(config.upsampling_ratios):
        x, upsample[str(i)] = _upsample_stage(params["upsample"][str(i)], x, state["upsample"][str(i)], ratio)
    p, ctx = params["decoder"], state["decoder"]
    x, in_conv = _causal_conv(p["in_conv"], x, ctx["in_conv"])
    blocks = {}
    for i, rate in enumerate(config.upsample_rates):
        x, blocks[str(i)] = _decoder_block(p["blocks"][str(i)], x, ctx["blocks"][str(i)], rate)
    x, out_conv = _causal_conv(p["out_conv"], snake_beta(p["out_snake"], x), ctx["out_conv"])
    decoder = {"in_conv": in_conv, "blocks": blocks, "out_conv": out_conv}
    state = {"pos": state["pos"] + codes.shape[-1], "attn": attn, "upsample": upsample, "decoder": decoder}
    return state, jnp.clip(x[..., 0], -1.0, 1.0)


_stream_step = jax.jit(_step, static_argnames="config")


def _decode(params: dict, config: Config, codes: jax.Array) -> jax.Array:
    """One step from the initial state: the same compiled step as a stream's first packet of that size."""
    state = stream_init(config, codes.shape[0], params["code_embedding"].dtype)
    return _stream_step(params, config, state, codes)[1]


# ---------------------------------------------------------------- public API


def code2wav(params: dict, config: Config, codes: Any) -> jax.Array:
    """HF `Qwen3OmniMoeCode2Wav.forward` on the whole sequence: codes b q n -> waveform b t in [-1, 1],
    t = output_length(config, n) (1920 n - 555). Jitted per shape."""
    return _decode(params, config, _check_codes(config, codes))


def chunked_decode(
    params: dict, config: Config, codes: Any, chunk_size: int = 300, left_context_size: int = 25
) -> jax.Array:
    """HF `chunked_decode`: chunks of `chunk_size` frames, each decoded from scratch with up to
    `left_context_size` earlier frames whose samples are dropped. codes b q n -> b t."""
    if chunk_size < 1 or left_context_size < 0:
        raise ValueError(
            f"need chunk_size >= 1 and left_context_size >= 0, got {chunk_size}, {left_context_size}"
        )
    codes = _check_codes(config, codes)
    pieces, start = [], 0
    while start < codes.shape[-1]:
        end = min(start + chunk_size, codes.shape[-1])
        context = min(left_context_size, start)
        wav = _decode(params, config, codes[..., start - context : end])
        pieces.append(wav[:, context * config.total_upsample :])
        start = end
    return jnp.concatenate(pieces, axis=-1)


def stream_step(params: dict, config: Config, state: dict, codes: Any) -> tuple[dict, jax.Array]:
    """Feed new frames codes b q m -> (next state, new samples b t). The first step returns
    output_length(config, m) samples, every later one m * total_upsample: samples that need look-ahead come
    one step late instead of being dropped, so the concatenated output equals `code2wav` of all frames fed so
    far. Jitted per step size (the first step compiles separately)."""
    codes = _check_codes(config, codes)
    if codes.shape[0] != _batch(state):
        raise ValueError(f"codes batch {codes.shape[0]} differs from the stream's batch {_batch(state)}")
    return _stream_step(params, config, state, codes)


def _batch(state: dict) -> int:
    return state["attn"]["k"].shape[1]


def _check_codes(config: Config, codes: Any) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"codes must be (batch, quantizers, frames), got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.shape[1] != config.num_quantizers:
        raise ValueError(
            f"expected {config.num_quantizers} quantizers (codes.shape[1]), got {codes.shape[1]}"
        )
    if codes.shape[0] == 0 or codes.shape[2] == 0:
        raise ValueError(f"codes are empty: shape {codes.shape}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= config.codebook_size:
        raise ValueError(f"codes must lie in [0, {config.codebook_size}), got values in [{low}, {high}]")
    return codes.astype(np.int32)
