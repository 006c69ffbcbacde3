"""Next-token selection, in transformers' logits-processor order: repetition penalty -> suppressed tokens ->
(when sampling) temperature -> top-k -> top-p -> categorical draw. Greedy is argmax of the processed logits.

`Sampling` is a frozen (hashable) dataclass, so it is a static argument of the jitted loops; randomness comes
from an explicit `jax.random` key, so a seed reproduces a run.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from omni_jax import validation


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy; top_k 0 and top_p 1 switch those filters off; penalty 1 is none."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    suppress_tokens: tuple[int, ...] = ()

    def __post_init__(self):
        """Types, finiteness (NaN / inf refused) and ranges of every setting, each error naming it."""
        temperature = validation.finite("temperature", self.temperature)
        validation.integer("top_k", self.top_k, minimum=0)
        top_p = validation.finite("top_p", self.top_p)
        penalty = validation.finite("repetition_penalty", self.repetition_penalty)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = none), got {penalty}")
        if not isinstance(self.suppress_tokens, tuple):
            kind = type(self.suppress_tokens).__name__
            raise TypeError(f"suppress_tokens must be a tuple of ids, got {kind}")
        for i, token in enumerate(self.suppress_tokens):
            validation.integer(f"suppress_tokens[{i}]", token, minimum=0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = Sampling()


def process_logits(logits: jax.Array, sampling: Sampling, seen: jax.Array | None = None) -> jax.Array:
    """Logits b v (float32) after every processor the settings switch on. `seen` (bool b v) marks the tokens
    the repetition penalty applies to (prompt and generated so far)."""
    if sampling.repetition_penalty != 1.0 and seen is not None:
        p = sampling.repetition_penalty
        logits = jnp.where(seen, jnp.where(logits < 0, logits * p, logits / p), logits)
    if sampling.suppress_tokens:
        logits = logits.at[:, jnp.asarray(sampling.suppress_tokens)].set(-jnp.inf)
    if sampling.greedy:
        return logits
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        order = jnp.argsort(logits, axis=-1)  # ascending, as transformers
        ascending = jnp.take_along_axis(logits, order, axis=-1)
        remove = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1) <= 1 - sampling.top_p
        remove = remove.at[:, -1].set(False)
        logits = jnp.where(
            jnp.zeros_like(remove).at[jnp.arange(len(order))[:, None], order].set(remove), -jnp.inf, logits
        )
    return logits


def sample(logits: jax.Array, sampling: Sampling, key: jax.Array, seen: jax.Array | None = None) -> jax.Array:
    """Next token per row. logits: b v -> b int32."""
    logits = process_logits(logits.astype(jnp.float32), sampling, seen)
    if sampling.greedy:
        return first_argmax(logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def first_argmax(logits: jax.Array) -> jax.Array:
    """jnp.argmax over the last axis (first maximum; first NaN if any) as two plain reductions, which XLA:CPU
    vectorises (its fused value-index argmax is ~3x slower on a 32k vocabulary). b v -> b int32."""
    hit = (logits == logits.max(axis=-1, keepdims=True)) | jnp.isnan(logits)
    index = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(hit, index, logits.shape[-1]), axis=-1)
