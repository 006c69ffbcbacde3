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
    cos, sin = jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)  # each frequency once
    return jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: b t h d; cos, sin: b t d (broadcast over heads)."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return x * cos + rotate_half(x) * sin


def mrope_axes(n_freq: int, mrope_section: tuple[int, ...]) -> np.ndarray:
    """Interleaved MRoPE: the position row (0 = T, 1 = H, 2 = W) each frequency slot reads. Slot j is H if
    j % 3 == 1 and j < 3 * s_H, W if j % 3 == 2 and j < 3 * s_W, else T (s_T is never read). -> (n_freq,)."""
    j = np.arange(n_freq)
    axes = np.zeros(n_freq, np.int32)
    axes[(j % 3 == 1) & (j < 3 * mrope_section[1])] = 1
    axes[(j % 3 == 2) & (j < 3 * mrope_section[2])] = 2
    return axes


def mrope_angles(positions: jax.Array, inv_freq: np.ndarray, mrope_section: tuple[int, ...]) -> jax.Array:
    """positions: 3 b t (T, H, W rows, float) -> angles b t d/2, each slot from its row (interleaved layout).
    Equal rows give exactly `rope_angles` of one row."""
    angles = rope_angles(positions, inv_freq)  # 3 b t f
    axes = mrope_axes(len(inv_freq), mrope_section)
    return jnp.where(axes == 0, angles[0], jnp.where(axes == 1, angles[1], angles[2]))
