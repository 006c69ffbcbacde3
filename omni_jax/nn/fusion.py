"""Multimodal fusion: encoder outputs written into the placeholder positions of token embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def place_audio(text: jax.Array, is_audio: jax.Array, audio: jax.Array, valid: jax.Array) -> jax.Array:
    """text: b s d; is_audio: b s; audio: w t d; valid: w t. The k-th valid frame (window-major) replaces the
    k-th audio position (row-major). Static shapes: callers check the counts beforehand."""
    b, s, d = text.shape
    frames = audio.reshape(-1, d).astype(text.dtype)  # (w t) d
    order = jnp.argsort(~valid.reshape(-1), stable=True)  # valid frames first, in order
    rank = jnp.maximum(jnp.cumsum(is_audio.reshape(-1)) - 1, 0)  # (b s)
    picked = frames[order[jnp.minimum(rank, order.shape[0] - 1)]].reshape(b, s, d)
    return jnp.where(is_audio[..., None], picked, text)
