"""Jitted prefill and decode over a static KV cache (donated, so updated in place).

    cache = init_cache(config, batch, length)
    step = prefill(params, config, input_ids, cache, attention_mask=mask)    # step.logits: b vocab (float32)
    step = decode_step(params, config, next_tokens, step.cache)

Inputs are token ids (b t) or precomputed embeddings (b t d, multimodal fusion); prompts are left-padded
(`attention_mask`) and bucketed to a power-of-two length (extra left padding), so few shapes compile.
`positions` (b t, or 3 b t for MRoPE) override the default 0.. per row; decode continues from the last
prompt position + 1 (the MRoPE delta is carried in `cache.next_pos`). `layer_inputs` (n b t d) are added
after layers 0..n-1 (deepstack). `hidden_layers` picks hidden states to return (transformers numbering:
0 the embeddings, i the output of layer i-1, num_layers the final-normed output); none cost anything unless
asked for. Under `omni_jax.sharding.use_mesh` activations, logits and the cache are sharded by the rules.
On CPU, `decoder.unstack_layers(params)` unrolls the layers instead of scanning a stack (faster decode:
XLA:CPU copies each scanned layer's weight slices).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax import sharding
from omni_jax.inference.cache import CACHE_AXES, KVCache, left_pad_start
from omni_jax.models.decoder import Config, forward

MIN_BUCKET = 8


class Step(NamedTuple):
    logits: jax.Array  # b vocab, float32, at the last position
    cache: KVCache
    hidden_states: dict[int, jax.Array]  # requested indices -> b t d


def bucket(t: int, limit: int) -> int:
    """Padded prompt length: the next power of two >= t (at least MIN_BUCKET), capped at `limit` >= t."""
    return max(t, min(limit, max(MIN_BUCKET, 1 << (t - 1).bit_length())))


def prepare(
    config: Config, inputs: Any, attention_mask: Any, positions: Any, layer_inputs: Any, length: int
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """Check a prompt and left-pad it to its bucket: -> (inputs, start, positions, layer_inputs)."""
    inputs = jnp.asarray(inputs)
    if inputs.ndim not in (2, 3) or (inputs.ndim == 3 and inputs.shape[-1] != config.hidden_size):
        raise ValueError(
            f"inputs must be token ids (b, t) or embeddings (b, t, {config.hidden_size}), got {inputs.shape}"
        )
    if inputs.ndim == 2 and not jnp.issubdtype(inputs.dtype, jnp.integer):
        raise ValueError(f"token ids must be integers, got {inputs.dtype}")
    if inputs.ndim == 2 and not config.embed:
        raise ValueError("this decoder has no embedding table: pass embeddings (b, t, d)")
    b, t = inputs.shape[:2]
    if t > length:
        raise ValueError(f"prompt of {t} tokens does not fit a cache of {length} slots")
    first = left_pad_start(attention_mask, (b, t))
    if positions is not None and np.shape(positions)[-2:] != (b, t):
        raise ValueError(f"positions shape {np.shape(positions)} does not end with {(b, t)}")
    if layer_inputs is not None and np.shape(layer_inputs)[1:] != (b, t, config.hidden_size):
        raise ValueError(
            f"layer_inputs shape {np.shape(layer_inputs)} != (n, {b}, {t}, {config.hidden_size})"
        )
    pad = bucket(t, length) - t

    def left(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (pad, 0)
        return jnp.pad(x, widths)

    start = jnp.asarray(pad + first, jnp.int32)
    positions = None if positions is None else left(jnp.asarray(positions, jnp.float32), -1)
    layer_inputs = None if layer_inputs is None else left(jnp.asarray(layer_inputs), 2)
    return left(inputs, 1), start, positions, layer_inputs


def prefill(
    params: dict,
    config: Config,
    inputs: Any,
    cache: KVCache,
    *,
    attention_mask: Any = None,
    positions: Any = None,
    layer_inputs: Any = None,
    hidden_layers: tuple[int, ...] = (),
    reserve: int = 0,
) -> Step:
    """Fill `cache` (donated) from slot 0 with a prompt; logits of its last position. `reserve` slots stay
    free for decoding (bucket padding never takes them). Hidden states cover the prompt's t positions."""
    t = np.shape(inputs)[1]
    if t + reserve > cache.length:
        raise ValueError(
            f"KV cache overflow: prompt {t} + {reserve} reserved slots exceed the cache length {cache.length}"
        )
    limit = cache.length - reserve
    inputs, start, positions, layer_inputs = prepare(
        config, inputs, attention_mask, positions, layer_inputs, limit
    )
    logits, cache, hidden = _prefill(
        params,
        config,
        inputs,
        start,
        positions,
        layer_inputs,
        cache,
        tuple(hidden_layers),
        sharding.current(),
    )
    return Step(logits, cache, {i: h[:, -t:] for i, h in hidden.items()})


def decode_step(
    params: dict, config: Config, tokens: Any, cache: KVCache, *, hidden_layers: tuple[int, ...] = ()
) -> Step:
    """One token per row (ids b, or embeddings b d) at slot cache.index and position cache.next_pos."""
    if int(cache.index) >= cache.length:
        raise ValueError(f"KV cache full: all {cache.length} slots are written")
    tokens = jnp.asarray(tokens)
    return Step(*_decode(params, config, tokens[:, None], cache, tuple(hidden_layers), sharding.current()))


def _shard_out(logits: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Pin the outputs to the current mesh (identity without one)."""
    logits = sharding.constrain(logits, ("batch", "act_vocab"))
    kv = {f: sharding.constrain(getattr(cache, f), CACHE_AXES) for f in ("k", "v")}
    return logits, dataclasses.replace(cache, **kv)


def prefill_core(params, config, inputs, start, positions, layer_inputs, cache, hidden_layers=()):
    """Prefill of an already bucketed prompt, traceable (used inside jitted loops)."""
    fresh = dataclasses.replace(cache, start=start, index=jnp.zeros((), jnp.int32))
    out, cache = forward(
        params, config, inputs, positions=positions, cache=fresh, layer_inputs=layer_inputs,
        hidden_layers=hidden_layers, logits="last",
    )  # fmt: skip
    t = inputs.shape[1]
    last = (t - 1 - start).astype(jnp.float32) if positions is None else positions[..., -1]
    cache = dataclasses.replace(cache, next_pos=(last.max(0) if last.ndim == 2 else last) + 1)
    logits, cache = _shard_out(out.logits.astype(jnp.float32), cache)
    return logits, cache, out.hidden_states


@functools.partial(jax.jit, static_argnums=(1, 7, 8), donate_argnums=(6,))
def _prefill(params, config, inputs, start, positions, layer_inputs, cache, hidden_layers, mesh_rules):
    del mesh_rules  # a static key: traces under a mesh differ from traces without
    return prefill_core(params, config, inputs, start, positions, layer_inputs, cache, hidden_layers)


def decode_core(params, config, tokens, cache, hidden_layers=()):
    """One decode step, traceable (used inside jitted loops). tokens: b 1 (ids) or b 1 d."""
    out, cache = forward(
        params, config, tokens, positions=cache.next_pos[:, None], cache=cache, hidden_layers=hidden_layers,
        logits="last",
    )  # fmt: skip
    logits, cache = _shard_out(
        out.logits.astype(jnp.float32), dataclasses.replace(cache, next_pos=cache.next_pos + 1)
    )
    return logits, cache, out.hidden_states


@functools.partial(jax.jit, static_argnums=(1, 4, 5), donate_argnums=(3,))
def _decode(params, config, tokens, cache, hidden_layers, mesh_rules):
    del mesh_rules
    return decode_core(params, config, tokens, cache, hidden_layers)
