"""Autoregressive generation over a StepModel (omni_jax.inference.engine).

`generate` runs prefill and the whole decode loop on device (one jitted `lax.while_loop`, which exits early
once every row has emitted an EOS id); `stream` yields each step's tokens as it is chosen, and
`stream_blocks` / `stream_step_blocks` several steps per jitted call (one host read per block).
Both return/yield token ids b per step: a row that has finished emits `pad_id` (transformers' rule;
the EOS itself is emitted). Step i samples with `jax.random.fold_in(PRNGKey(seed), i)`. `generate` and
`stream` take the decoder's (params, config, inputs); `generate_steps` and `stream_steps` any StepModel.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax import sharding, validation
from omni_jax.inference.engine import StepModel, TokenDecoder, bucket, prepare, run_prefill
from omni_jax.inference.sampling import GREEDY, Sampling, sample
from omni_jax.models.decoder import Config


def stop_ids(generation_config) -> tuple[tuple[int, ...], int]:
    """(EOS ids, pad id) of a transformers GenerationConfig (or its dict), with transformers' fallbacks."""
    get = (
        generation_config.get
        if isinstance(generation_config, dict)
        else lambda k: getattr(generation_config, k, None)
    )
    eos = get("eos_token_id")
    eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    pad = get("pad_token_id")
    return eos, pad if pad is not None else (eos[0] if eos else 0)


def generate(
    params: dict, config: Config, inputs: Any, *, max_new_tokens: int, attention_mask: Any = None,
    positions: Any = None, layer_inputs: Any = None, sampling: Sampling = GREEDY,
    eos_ids: int | tuple[int, ...] = (), pad_id: int | None = None, seed: int = 0,
    cache_length: int | None = None, prompt_ids: Any = None,
) -> jax.Array:  # fmt: skip
    """New tokens b max_new_tokens (pad after a row's EOS). `prompt_ids` (b t) are what the repetition penalty
    sees for the prompt (default: `inputs` when they are ids)."""
    eos, pad, length = _settings(config, inputs, max_new_tokens, eos_ids, pad_id, cache_length, sampling)
    seen = _prompt_seen(config, sampling, inputs, prompt_ids)  # before bucket padding adds id 0
    prompt = prepare(config, inputs, attention_mask, positions, layer_inputs, length - max_new_tokens)
    return generate_steps(
        TokenDecoder(config), params, prompt, seen, max_new_tokens=max_new_tokens, length=length,
        sampling=sampling, eos_ids=eos, pad_id=pad, seed=seed,
    )  # fmt: skip


def stream(params: dict, config: Config, inputs: Any, **options: Any) -> Iterator[np.ndarray]:
    """Yield each step's tokens (b,) as soon as they are chosen; the same keyword arguments (checked against
    `generate`'s signature) and tokens as `generate`."""
    for block in stream_blocks(params, config, inputs, sizes=(1,), **options):
        yield from block.T


stream.__signature__ = inspect.signature(generate).replace(return_annotation=Iterator[np.ndarray])


def stream_blocks(
    params: dict, config: Config, inputs: Any, *, sizes: tuple[int, ...], **options: Any
) -> Iterator[np.ndarray]:
    """`stream` in blocks b n: step 0 after the prefill, then up to sizes[k] steps per block (the last size
    repeats), each block one jitted call (`stream_step_blocks`)."""
    bound = inspect.signature(generate).bind(params, config, inputs, **options)
    bound.apply_defaults()
    a = bound.arguments
    max_new_tokens, sampling = a["max_new_tokens"], a["sampling"]
    eos, pad, length = _settings(
        config, inputs, max_new_tokens, a["eos_ids"], a["pad_id"], a["cache_length"], sampling
    )
    seen = _prompt_seen(config, sampling, inputs, a["prompt_ids"])
    prompt = prepare(
        config, inputs, a["attention_mask"], a["positions"], a["layer_inputs"], length - max_new_tokens
    )
    yield from stream_step_blocks(
        TokenDecoder(config), params, prompt, seen, sizes=sizes, max_new_tokens=max_new_tokens,
        length=length, sampling=sampling, eos_ids=eos, pad_id=pad, seed=a["seed"],
    )  # fmt: skip


def generate_steps(
    model: StepModel, params: Any, prompt: Any, seen: jax.Array | None, *, max_new_tokens: int, length: int,
    sampling: Sampling = GREEDY, eos_ids: tuple[int, ...] = (), pad_id: int = 0, seed: int = 0,
) -> jax.Array:  # fmt: skip
    """New tokens b max_new_tokens of `model` on a prepared `prompt` (leading axis: batch), on device."""
    validation.integer("seed", seed)
    return _generate(
        model, params, prompt, seen, jax.random.PRNGKey(seed), batch=len(jax.tree.leaves(prompt)[0]),
        max_new=max_new_tokens, sampling=sampling, eos=tuple(eos_ids), pad=pad_id, length=length,
        mesh_rules=sharding.current(),
    )  # fmt: skip


def stream_steps(
    model: StepModel, params: Any, prompt: Any, seen: jax.Array | None, **options: Any
) -> Iterator[np.ndarray]:
    """Each step's tokens (b,) of `model` on a prepared `prompt`; the same tokens as `generate_steps` (same
    keyword arguments)."""
    for block in stream_step_blocks(model, params, prompt, seen, sizes=(1,), **options):
        yield from block.T


def stream_step_blocks(
    model: StepModel, params: Any, prompt: Any, seen: jax.Array | None, *, sizes: tuple[int, ...],
    max_new_tokens: int, length: int, sampling: Sampling = GREEDY, eos_ids: tuple[int, ...] = (),
    pad_id: int = 0, seed: int = 0,
) -> Iterator[np.ndarray]:  # fmt: skip
    """Tokens b n of `model` on a prepared `prompt` block by block: step 0 (b 1) after the prefill, then up
    to sizes[k] steps per block (the last size repeats; fewer once every row is done), each block one jitted
    `lax.while_loop` read back once; the same tokens as `generate_steps`."""
    if not sizes or min(sizes) < 1:
        raise ValueError(f"block sizes must be >= 1 step, got {sizes}")
    b, eos = len(jax.tree.leaves(prompt)[0]), tuple(eos_ids)
    validation.integer("seed", seed)
    step = run_prefill(model, params, prompt, model.init_cache(params, b, length))
    key, done = jax.random.PRNGKey(seed), jnp.zeros((b,), bool)
    token, done, seen = _select_jit(step.logits, key, 0, seen, done, sampling, eos, pad_id)
    yield np.asarray(token)[:, None]
    carry, i, stop = (jnp.ones((), jnp.int32), token, step.cache, done, seen), 1, jnp.int32(max_new_tokens)
    for k in itertools.count():
        if i >= max_new_tokens or bool(carry[3].all()):
            return
        carry, block = _block(
            model, params, carry, key, stop, size=sizes[min(k, len(sizes) - 1)], sampling=sampling,
            eos=eos, pad=pad_id, mesh_rules=sharding.current(),
        )  # fmt: skip
        n, i = int(carry[0]) - i, int(carry[0])
        yield np.asarray(block)[:, :n]


def _settings(
    config, inputs, max_new_tokens, eos_ids, pad_id, cache_length, sampling
) -> tuple[tuple[int, ...], int, int]:
    """Checked (eos ids, pad id, cache length); overflow is an error before anything runs."""
    if not config.embed or not config.lm_head:
        raise ValueError("generation needs a decoder with an embedding table and an lm_head")
    if not isinstance(sampling, Sampling):
        raise TypeError(f"sampling must be an omni_jax Sampling, got {type(sampling).__name__}")
    if np.ndim(inputs) not in (2, 3):
        raise ValueError(
            f"inputs must be token ids (batch, length) or embeddings (batch, length, d), got shape "
            f"{np.shape(inputs)}" + ("; add a batch axis: ids[None]" if np.ndim(inputs) == 1 else "")
        )
    validation.integer("max_new_tokens", max_new_tokens, minimum=1)
    eos = (eos_ids,) if isinstance(eos_ids, int) else tuple(eos_ids)
    for i, token in enumerate(eos):
        if not 0 <= validation.integer(f"eos_ids[{i}]", token) < config.vocab_size:
            raise ValueError(f"eos_ids[{i}] = {token} is outside the vocabulary [0, {config.vocab_size})")
    pad = validation.integer("pad_id", pad_id) if pad_id is not None else (eos[0] if eos else 0)
    t = np.shape(inputs)[1]
    length = bucket(t, 1 << 62) + max_new_tokens if cache_length is None else cache_length
    if t + max_new_tokens > length:
        raise ValueError(
            f"KV cache overflow: prompt {t} + max_new_tokens {max_new_tokens} = {t + max_new_tokens} "
            f"exceeds the cache length {length}"
        )
    return eos, pad, length


def _prompt_seen(config, sampling, inputs, prompt_ids) -> jax.Array | None:
    """b vocab mask of prompt tokens for the repetition penalty (None when the penalty is off): `prompt_ids`
    when given (embedding inputs), else `inputs` when they are ids (b t). Padding ids count, as in HF."""
    if sampling.repetition_penalty == 1.0:
        return None
    ids = jnp.asarray(inputs if prompt_ids is None else prompt_ids)
    seen = jnp.zeros((ids.shape[0], config.vocab_size), bool)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        return seen
    return seen.at[jnp.arange(ids.shape[0])[:, None], ids].set(True)


def _select(logits, key, i, seen, done, sampling, eos, pad):
    """Step i's tokens: sampled, pad for finished rows; -> (tokens b, done b, seen)."""
    token = jnp.where(done, pad, sample(logits, sampling, jax.random.fold_in(key, i), seen))
    if eos:
        done = done | jnp.isin(token, jnp.asarray(eos))
    if seen is not None:
        seen = seen.at[jnp.arange(token.shape[0]), token].set(True)
    return token, done, seen


_select_jit = jax.jit(_select, static_argnums=(5, 6, 7))


def _decode(model, params, key, carry, tokens, offset, stop, sampling, eos, pad):
    """Decode steps carry[0] .. stop - 1 (fewer once every row is done), step i's tokens written to column
    i - offset of `tokens`. carry: (i, the previous tokens b, cache, done b, seen)."""

    def cond(state):
        (i, _, _, done, _), _ = state
        return (i < stop) & ~done.all()

    def body(state):
        (i, prev, cache, done, seen), tokens = state
        out = model.step(params, model.next_input(params, prev), cache)
        token, done, seen = _select(out.logits, key, i, seen, done, sampling, eos, pad)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], i - offset, axis=1)
        return (i + 1, token, out.cache, done, seen), tokens

    return jax.lax.while_loop(cond, body, (carry, tokens))


@functools.partial(
    jax.jit, static_argnames=("model", "batch", "max_new", "sampling", "eos", "pad", "length", "mesh_rules")
)
def _generate(model, params, prompt, seen, key, *, batch, max_new, sampling, eos, pad, length, mesh_rules):
    del mesh_rules  # a static key: traces under a mesh differ from traces without
    step = model.prefill(params, prompt, model.init_cache(params, batch, length))
    token, done, seen = _select(step.logits, key, 0, seen, jnp.zeros((batch,), bool), sampling, eos, pad)
    tokens = jnp.full((batch, max_new), pad, jnp.int32).at[:, 0].set(token)
    carry = (jnp.ones((), jnp.int32), token, step.cache, done, seen)
    return _decode(model, params, key, carry, tokens, 0, max_new, sampling, eos, pad)[1]


@functools.partial(
    jax.jit,
    static_argnames=("model", "size", "sampling", "eos", "pad", "mesh_rules"),
    donate_argnames="carry",
)
def _block(model, params, carry, key, stop, *, size, sampling, eos, pad, mesh_rules):
    """Up to `size` decode steps from carry[0] (not past `stop`): (carry, tokens b size, pad past the end)."""
    del mesh_rules
    start, b = carry[0], carry[1].shape[0]
    tokens = jnp.full((b, size), pad, jnp.int32)
    end = jnp.minimum(stop, start + size)
    return _decode(model, params, key, carry, tokens, start, end, sampling, eos, pad)
