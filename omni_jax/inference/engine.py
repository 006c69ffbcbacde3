"""The step protocol the generation loops drive, and the RoPE decoder as one implementation of it.

A `StepModel` is a hashable description (static under jit; parameters travel apart):
    init_cache(params, batch, length) -> cache             static shapes, donated through every call
    prefill(params, prompt, cache)    -> Step               logits b vocab (float32) at the last position
    step(params, inputs, cache)       -> Step               one position per row
    next_input(params, tokens b)      -> the next step's inputs (token ids here; embeddings for the Talker)
`TokenDecoder` is the token-in/token-out decoder over omni_jax.nn.cache.KVCache:

    cache = init_cache(config, batch, length)
    step = prefill(params, config, input_ids, cache, attention_mask=mask)    # step.logits: b vocab
    step = decode_step(params, config, next_tokens, step.cache)

Inputs are token ids (b t) or precomputed embeddings (b t d, multimodal fusion); prompts are left-padded
(`attention_mask`) and bucketed to a power-of-two length (extra left padding), so few shapes compile.
`positions` (b t, or 3 b t for MRoPE) override the default 0.. per row; decode continues from the last
prompt position + 1 (the MRoPE delta is carried in `cache.next_pos`). `layer_inputs` (n b t d) are added
after layers 0..n-1 (deepstack). `hidden_layers` picks hidden states to return (transformers numbering:
0 the embeddings, i the output of layer i-1, num_layers the final-normed output); none cost anything unless
asked for. Under `omni_jax.sharding.use_mesh` activations, logits and the cache are sharded by the rules.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax import sharding, validation
from omni_jax.models.decoder import Config, forward
from omni_jax.nn.cache import CACHE_AXES, KVCache, init_cache, left_pad_start

MIN_BUCKET = 8


class Step(NamedTuple):
    logits: jax.Array  # b vocab, float32, at the last position
    cache: Any
    hidden_states: dict[int, jax.Array]  # requested indices -> b t d


class StepModel(Protocol):
    def init_cache(self, params: Any, batch: int, length: int) -> Any: ...
    def prefill(self, params: Any, prompt: Any, cache: Any) -> Step: ...
    def step(self, params: Any, inputs: Any, cache: Any) -> Step: ...
    def next_input(self, params: Any, tokens: jax.Array) -> Any: ...


class Prompt(NamedTuple):
    """A decoder prompt bucketed for prefill."""

    inputs: jax.Array  # b t (ids) or b t d, left-padded to the bucket
    start: jax.Array  # b int32: first valid slot
    positions: jax.Array | None  # b t or 3 b t
    layer_inputs: jax.Array | None  # n b t d


def param_dtype(params: dict):
    return jax.tree.leaves(params["layers"])[0].dtype


@dataclasses.dataclass(frozen=True)
class TokenDecoder:
    """omni_jax.models.decoder as a StepModel: token ids (or embeddings) in, next-token logits out."""

    config: Config
    hidden_layers: tuple[int, ...] = ()

    def init_cache(self, params: dict, batch: int, length: int) -> KVCache:
        return init_cache(self.config, batch, length, param_dtype(params))

    def prefill(self, params: dict, prompt: Prompt, cache: KVCache) -> Step:
        """Fill the cache from slot 0; decode then continues from each row's last position + 1."""
        inputs, start, positions, layer_inputs = prompt
        fresh = dataclasses.replace(cache, start=start, index=jnp.zeros((), jnp.int32))
        out, cache = self._forward(params, inputs, fresh, positions=positions, layer_inputs=layer_inputs)
        last = (inputs.shape[1] - 1 - start).astype(jnp.float32) if positions is None else positions[..., -1]
        cache = dataclasses.replace(cache, next_pos=(last.max(0) if last.ndim == 2 else last) + 1)
        return Step(*_shard_out(out.logits, cache), out.hidden_states)

    def step(self, params: dict, inputs: jax.Array, cache: KVCache) -> Step:
        """inputs: b 1 (ids) or b 1 d, at slot cache.index and position cache.next_pos."""
        out, cache = self._forward(params, inputs, cache, positions=cache.next_pos[:, None])
        cache = dataclasses.replace(cache, next_pos=cache.next_pos + 1)
        return Step(*_shard_out(out.logits, cache), out.hidden_states)

    def next_input(self, params: dict, tokens: jax.Array) -> jax.Array:
        return tokens[:, None]

    def _forward(self, params, inputs, cache, **kwargs):
        return forward(
            params,
            self.config,
            inputs,
            cache=cache,
            hidden_layers=self.hidden_layers,
            logits="last",
            **kwargs,
        )


def _shard_out(logits: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """float32 logits and the cache, pinned to the current mesh (identity without one)."""
    logits = sharding.constrain(logits.astype(jnp.float32), ("batch", "act_vocab"))
    kv = {f: sharding.constrain(getattr(cache, f), CACHE_AXES) for f in ("k", "v")}
    return logits, dataclasses.replace(cache, **kv)


@functools.partial(jax.jit, static_argnames=("model", "mesh_rules"), donate_argnames=("cache",))
def _prefill(model, params, prompt, cache, mesh_rules):
    del mesh_rules  # a static key: traces under a mesh differ from traces without
    return model.prefill(params, prompt, cache)


@functools.partial(jax.jit, static_argnames=("model", "mesh_rules"), donate_argnames=("cache",))
def _step(model, params, inputs, cache, mesh_rules):
    del mesh_rules
    return model.step(params, inputs, cache)


def run_prefill(model: StepModel, params: Any, prompt: Any, cache: Any) -> Step:
    """model.prefill, jitted, the cache donated."""
    return _prefill(model, params, prompt, cache, sharding.current())


def run_step(model: StepModel, params: Any, inputs: Any, cache: Any) -> Step:
    """model.step, jitted, the cache donated."""
    return _step(model, params, inputs, cache, sharding.current())


def bucket(t: int, limit: int) -> int:
    """Padded prompt length: the next power of two >= t (at least MIN_BUCKET), capped at `limit` >= t."""
    return max(t, min(limit, max(MIN_BUCKET, 1 << (t - 1).bit_length())))


def pad_to_bucket(limit: int, *arrays: Any) -> tuple[np.ndarray, ...]:
    """Host arrays with time last, left-padded with zeros to the bucket of their length (as `prepare` pads),
    so that the stages before the engine (audio fusion) see one shape per bucket."""
    arrays = tuple(np.asarray(a) for a in arrays)
    t = arrays[0].shape[-1]
    pad = bucket(t, limit) - t
    return tuple(np.pad(a, [(0, 0)] * (a.ndim - 1) + [(pad, 0)]) for a in arrays)


def prepare(
    config: Config, inputs: Any, attention_mask: Any, positions: Any, layer_inputs: Any, length: int
) -> Prompt:
    """Check a prompt and left-pad it to its bucket."""
    inputs = jnp.asarray(inputs)
    if inputs.ndim not in (2, 3) or (inputs.ndim == 3 and inputs.shape[-1] != config.hidden_size):
        raise ValueError(
            f"inputs must be token ids (b, t) or embeddings (b, t, {config.hidden_size}), got {inputs.shape}"
        )
    if inputs.ndim == 2:
        validation.token_ids("input_ids", np.asarray(inputs), config.vocab_size)
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
    return Prompt(left(inputs, 1), start, positions, layer_inputs)


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
    prompt = prepare(config, inputs, attention_mask, positions, layer_inputs, cache.length - reserve)
    step = run_prefill(TokenDecoder(config, tuple(hidden_layers)), params, prompt, cache)
    return step._replace(hidden_states={i: h[:, -t:] for i, h in step.hidden_states.items()})


def decode_step(
    params: dict, config: Config, tokens: Any, cache: KVCache, *, hidden_layers: tuple[int, ...] = ()
) -> Step:
    """One token per row (ids b, or embeddings b d) at slot cache.index and position cache.next_pos."""
    if int(cache.index) >= cache.length:
        raise ValueError(f"KV cache full: all {cache.length} slots are written")
    model = TokenDecoder(config, tuple(hidden_layers))
    return run_step(model, params, jnp.asarray(tokens)[:, None], cache)
