"""causal_blocked_attention (flash-style online softmax) against the dense masked path, alone and as the
decoder's long-prefill attention. JAX vs JAX on purpose: both paths are ours, the dense one being the one
parity-tested against transformers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.models import decoder
from omni_jax.nn.attention import attention, causal_blocked_attention
from omni_jax.nn.cache import init_cache
from omni_jax.nn.params import init_params


@pytest.mark.parametrize(
    "b, t, s, h, kh, offset, block",
    [(2, 37, 37, 4, 2, 0, 16), (2, 100, 130, 4, 1, 30, 32)],
)
def test_matches_dense_attention(b, t, s, h, kh, offset, block):
    rng = np.random.default_rng(0)
    q, k, v = (
        jnp.asarray(rng.normal(size=(b, n, heads, 8)), jnp.float32) for n, heads in ((t, h), (s, kh), (s, kh))
    )
    start = jnp.array([0, 3][:b])
    slots, keys = offset + jnp.arange(t), jnp.arange(s)
    mask = (keys[None, None] >= start[:, None, None]) & (keys[None, None] <= slots[None, :, None])
    dense = jax.jit(attention)(q, k, v, mask=mask[:, None])
    blocked = jax.jit(causal_blocked_attention, static_argnames="block")(
        q, k, v, start=start, offset=offset, block=block
    )
    valid = np.asarray(slots[None, :] >= start[:, None])  # rows with a key to attend (not left padding)
    assert np.abs(np.asarray(dense - blocked))[valid].max() <= 1e-5


def test_decoder_prefill_uses_it_past_the_threshold(monkeypatch):
    config = decoder.Config(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                            head_dim=8,
                            intermediate_size=48, sparse_layers=(False,))  # fmt: skip
    params = init_params(decoder.param_specs(config), jax.random.PRNGKey(0))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 40)))
    cache = dataclasses.replace(init_cache(config, 2, 48), start=jnp.array([0, 7]))

    def last_logits():  # traced anew on each call, so the threshold in force is the one used
        out, _ = jax.jit(lambda p, c: decoder.forward(p, config, ids, cache=c, logits="last"))(params, cache)
        return np.asarray(out.logits)

    dense = last_logits()
    monkeypatch.setattr(decoder, "BLOCKED_FROM", 16)
    assert np.abs(last_logits() - dense).max() <= 1e-5
