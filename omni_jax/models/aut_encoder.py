"""Qwen3-Omni AuT audio encoder (Qwen3OmniMoeAudioEncoder) with exact block-diagonal windowed attention.

Layout: each audio's frames are cut into 100-frame chunks (3 stride-2 conv2d -> 13 tokens each, positions
restarting per chunk); attention windows (n_window_infer // 100 chunks) are consecutive blocks of an audio's
chunks, and everything but attention is per token. So the encoder runs on whole chunks only: full windows
pooled over the batch in groups of 8/4/2/1, and each audio's last, shorter window (its remaining chunks), with
windowed attention a reshape per kind of window. Shapes come from a bounded set whatever the length, and a
clip pays for less than one chunk of padding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

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
    unrolled_packed,
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
from omni_jax.nn.packed import pack_kernels

CHUNK = 100  # mel frames per conv chunk (2 * n_window; transformers hard-codes the 13 tokens it yields)
CHUNK_TOKENS = 13
CONV_GROUP = 4  # chunks per conv step: XLA:CPU's conv2d runs at ~60 % of its rate from 6 chunks on


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


def _chunk_tokens(params: dict, config: AuTConfig, chunks: jax.Array, chunk_lengths: jax.Array, pad_len):
    """chunks: n mel 100 with chunk_lengths n valid frames (0 for padding chunks). -> (n 13 d, valid n 13)."""
    x = jnp.where(jnp.arange(CHUNK) < chunk_lengths[:, None, None], chunks, 0)[..., None]
    x = jax.lax.map(
        lambda c: _conv_stack(params, c[None], pad_len)[0],
        x.astype(params["conv1"]["kernel"].dtype),
        batch_size=CONV_GROUP,
    )
    n, f, t, c = x.shape  # t = 13
    x = linear(params["conv_out"], x.transpose(0, 2, 3, 1).reshape(n, t, c * f))  # channel-major flatten
    x = x + jnp.asarray(sinusoids(t, config.d_model), x.dtype)  # positions restart in every chunk
    return x, jnp.arange(t) < audio_token_count(chunk_lengths)[:, None]


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def forward(
    params: dict,
    config: AuTConfig,
    windows: int,
    tail_chunks: int,
    chunks: jax.Array,
    chunk_lengths: jax.Array,
    pad_len: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Encoder over whole attention windows: `windows` full windows (window_chunks chunks each), then shorter
    windows of `tail_chunks` chunks (the audios' tails). All but attention runs over the packed tokens.
    chunks: n mel 100; chunk_lengths: n valid frames; pad_len: transformers' chunk padding (longest chunk of
    the call). -> (out n*13 output_dim, valid n*13)."""
    x, valid = _chunk_tokens(params, config, chunks, chunk_lengths, pad_len)
    x, valid = x.reshape(1, -1, config.d_model), valid.reshape(1, -1)
    split = windows * config.window
    spans = [(0, split, config.window), (split, x.shape[1], tail_chunks * CHUNK_TOKENS)]
    spans = [s for s in spans if s[1] > s[0]]

    def attend(q, k, v, *, scale):
        return jnp.concatenate(
            [
                windowed_attention(
                    q[:, a:b], k[:, a:b], v[:, a:b], window=w, key_mask=valid[:, a:b], scale=scale
                )
                for a, b, w in spans
            ],
            axis=1,
        )

    return _layers_and_head(params, config, x, attend)[0], valid[0]


def _layers_and_head(params: dict, config: AuTConfig, x: jax.Array, attend) -> jax.Array:
    """The encoder layers with `attend` as their attention, then ln_post, proj1, activation, proj2:
    b n d -> b n output_dim."""
    with jax.named_scope("aut_layers"):
        x = encoder_stack(
            params["layers"], x, attend, heads=config.heads, act=config.activation, scale_q_first=False
        )
    x = linear(params["proj1"], layer_norm(params["ln_post"], x, LN_EPS))
    return linear(params["proj2"], activation(config.activation)(x))


def forward_padded(
    params: dict, config: AuTConfig, features: jax.Array, lengths: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Traceable encoder for training batches (lengths may be traced): features b mel T with T a multiple of
    window_frames (`bucket_frames`); lengths b valid frames (>= 1). -> (out b n output_dim, valid b n),
    n = T / 100 * 13; audio i's tokens are the first audio_token_count(lengths[i]) rows."""
    b, mel, frames = features.shape
    chunks = frames // CHUNK
    x = features.reshape(b, mel, chunks, CHUNK).transpose(0, 2, 1, 3).reshape(b * chunks, mel, CHUNK)
    chunk_lengths = jnp.clip(lengths[:, None] - jnp.arange(chunks) * CHUNK, 0, CHUNK).reshape(-1)
    x, valid = _chunk_tokens(params, config, x, chunk_lengths, jnp.minimum(lengths.max(), CHUNK))
    x, valid = x.reshape(b, -1, config.d_model), valid.reshape(b, -1)

    def attend(q, k, v, *, scale):
        return windowed_attention(q, k, v, window=config.window, key_mask=valid, scale=scale)

    return _layers_and_head(params, config, x, attend), valid


MAX_GROUP = 8  # full windows per call at most; calls take 8, 4, 2 or 1 of them


def _window_groups(n: int) -> list[int]:
    """n full windows as calls of 8, then 4, 2, 1 (a bounded set of shapes for any length)."""
    groups = [MAX_GROUP] * (n // MAX_GROUP)
    rest = n % MAX_GROUP
    return groups + [g for g in (4, 2, 1) if rest & g]


class Call(NamedTuple):
    """One `forward` call: `windows` full windows then tails of `tail_chunks` chunks; `chunks` lists
    (audio, chunk index or -1 for padding) in token order."""

    windows: int
    tail_chunks: int
    chunks: tuple[tuple[int, int], ...]


def plan_calls(config: AuTConfig, lengths: np.ndarray) -> list[Call]:
    """Calls that encode every audio: full windows pooled over the batch, each audio's shorter tail window
    (its remaining chunks; padded to the batch's longest tail) with the last group. A lone audio computes
    its own chunks only; shapes come from a bounded set (groups of 8/4/2/1 windows x tail sizes)."""
    wc = config.window_chunks
    full = [(i, w) for i, n in enumerate(lengths) for w in range(int(n) // config.window_frames)]
    tails = {i: -(-(int(n) % config.window_frames) // CHUNK) for i, n in enumerate(lengths)}
    tails = {i: r for i, r in tails.items() if r}
    r = max(tails.values(), default=0)
    tail_chunks = tuple(
        (i, (int(lengths[i]) // config.window_frames) * wc + c if c < tails[i] else -1)
        for i in tails
        for c in range(r)
    )
    calls, start = [], 0
    for g in _window_groups(len(full)):
        chunks = tuple((i, w * wc + c) for i, w in full[start : start + g] for c in range(wc))
        calls.append(Call(g, 0, chunks))
        start += g
    if tails:
        last = calls.pop() if calls else Call(0, 0, ())
        calls.append(Call(last.windows, r, last.chunks + tail_chunks))
    return calls


def slot_count(config: AuTConfig, max_frames: int) -> int:
    """Output token slots of a batch whose longest audio has `max_frames`: whole windows (a coarse bucket
    for what follows the encoder; the encoder itself computes whole chunks only)."""
    return -(-max_frames // config.window_frames) * config.window


def bucket_frames(config: AuTConfig, max_frames: int) -> int:
    """Padded frame count of a batch whose longest audio has `max_frames`: a whole number of windows (the
    training batches' static feature length)."""
    return -(-max_frames // config.window_frames) * config.window_frames


def encode(params: dict, config: AuTConfig, features, lengths) -> tuple[jax.Array, jax.Array]:
    """Validated entry point. features: b mel T (frames past each length are ignored); lengths: b valid
    frames. Runs `plan_calls`, then places each audio's tokens at the start of its row. The batch is
    transformers' "call": its longest chunk sets the conv zero padding of every chunk.
    -> (out b n output_dim, valid b n), n = slot_count."""
    lengths = check_inputs(config, features, lengths)
    features = np.asarray(features)
    pad_len = jnp.asarray(min(int(lengths.max()), CHUNK), jnp.int32)
    n = slot_count(config, int(lengths.max()))
    out = np.zeros((len(lengths), n, config.output_dim), np.dtype(params["ln_post"]["scale"].dtype))
    for call in plan_calls(config, lengths):
        chunks, chunk_lengths = _gather_chunks(features, lengths, call.chunks)
        tokens, _ = forward(
            params, config, call.windows, call.tail_chunks, jnp.asarray(chunks), jnp.asarray(chunk_lengths),
            pad_len,
        )  # fmt: skip
        tokens = np.asarray(tokens).reshape(len(call.chunks), CHUNK_TOKENS, -1)
        for (i, c), t in zip(call.chunks, tokens, strict=True):
            if c >= 0:
                out[i, c * CHUNK_TOKENS : (c + 1) * CHUNK_TOKENS] = t
    valid = np.arange(n) < audio_token_count(lengths)[:, None]
    return jnp.asarray(out), jnp.asarray(valid)


def _gather_chunks(features: np.ndarray, lengths: np.ndarray, chunks) -> tuple[np.ndarray, np.ndarray]:
    """(audio, chunk) pairs -> (n mel 100 frames, n valid frames); padding chunks (-1) are empty."""
    b, mel, frames = features.shape
    out = np.zeros((len(chunks), mel, CHUNK), features.dtype)
    valid = np.zeros(len(chunks), np.int32)
    for k, (i, c) in enumerate(chunks):
        if c < 0:
            continue
        piece = features[i, :, c * CHUNK : min((c + 1) * CHUNK, int(lengths[i]))]
        out[k, :, : piece.shape[1]] = piece
        valid[k] = piece.shape[1]
    return out, valid


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


def cpu_layout(params: dict) -> dict:
    """The parameters laid out for float32 inference on one CPU device, as the Qwen3-Omni pipeline encodes:
    the layers unrolled with packed linears, conv_out and the projections packed (`nn.packed`)."""
    linears = pack_kernels({k: params[k] for k in ("conv_out", "proj1", "proj2")})
    return {**params, **linears, "layers": unrolled_packed(params["layers"])}
