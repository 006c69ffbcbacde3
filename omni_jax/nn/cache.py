"""Static-shape KV cache for the RoPE decoders.

Rows are left-padded: row b's valid keys are slots start[b] .. index-1, so a whole batch writes the same slot
each step. K is stored after q/k-norm and RoPE. `next_pos` is each row's RoPE position for the next token
(the last prompt position + 1, which carries the MRoPE delta into decode).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# logical axes of the cache arrays, for omni_jax.sharding
CACHE_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: jax.Array  # layers b s kh hd
    v: jax.Array  # layers b s kh hd
    start: jax.Array  # b int32: first valid slot
    index: jax.Array  # () int32: next slot to write
    next_pos: jax.Array  # b float32

    @property
    def length(self) -> int:
        return self.k.shape[2]


def init_cache(config, batch: int, length: int, dtype=jnp.float32) -> KVCache:
    """An empty cache of `length` slots for a decoder `config` (omni_jax.models.decoder.Config)."""
    if batch < 1 or length < 1:
        raise ValueError(f"cache needs batch >= 1 and length >= 1, got batch={batch}, length={length}")
    shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        start=jnp.zeros((batch,), jnp.int32),
        index=jnp.zeros((), jnp.int32),
        next_pos=jnp.zeros((batch,), jnp.float32),
    )


def left_pad_start(attention_mask: Any, shape: tuple[int, int]) -> np.ndarray:
    """First valid slot of each row of a left-padded mask (b t), checked: zeros then ones. -> (b,) int32."""
    if attention_mask is None:
        return np.zeros(shape[0], np.int32)
    mask = np.asarray(attention_mask).astype(bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"attention_mask shape {mask.shape} != inputs {tuple(shape)}")
    if (np.diff(mask.astype(np.int8), axis=1) < 0).any() or not mask[:, -1].all():
        raise ValueError("attention_mask must be left padding: zeros then ones, last column all ones")
    return (shape[1] - mask.sum(1)).astype(np.int32)
