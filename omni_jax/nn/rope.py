"""Rotary position embeddings (half-split `rotate_half` convention), tables in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """1 / theta^(2i/d) computed in float32 as transformers does. -> (head_dim/2,)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)


def rope_angles(positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """positions: ... t (int) -> angles ... t d/2, float32 (an exact elementwise product)."""
    return positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)


def rope_cos_sin(angles: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """angles ... t d/2 -> (cos, sin) ... t d, duplicated halves, cast to the activation dtype."""
    emb = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: b t h d; cos, sin: b t d (broadcast over heads)."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return x * cos + rotate_half(x) * sin
