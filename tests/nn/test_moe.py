"""grouped_matmul (CPU path of the ragged MoE dispatch) against a NumPy per-group product: values, VJP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.nn.moe import grouped_matmul


def per_group(x, w, sizes):
    ends = np.cumsum(sizes)
    return np.concatenate([x[e - n : e] @ w[g] for g, (n, e) in enumerate(zip(sizes, ends, strict=True))])


# empty groups first, inside and last; slabs of 8 rows, so groups end mid-slab
@pytest.mark.parametrize("sizes", [[0, 20, 0, 150, 1, 0]])
def test_grouped_matmul_values_and_gradients(sizes):
    rng = np.random.default_rng(len(sizes))
    m, g = sum(sizes), len(sizes)
    x, w = rng.normal(size=(m, 16)), rng.normal(size=(g, 16, 12))
    dy = rng.normal(size=(m, 12))
    run = jax.jit(lambda x, w: grouped_matmul(x, w, jnp.asarray(sizes, jnp.int32)))
    xs, ws = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
    np.testing.assert_allclose(run(xs, ws), per_group(x, w, sizes), rtol=1e-5, atol=1e-4)
    _, vjp = jax.vjp(run, xs, ws)
    dx, dw = vjp(jnp.asarray(dy, jnp.float32))
    ends = np.cumsum(sizes)
    want_dw = np.stack([x[e - n : e].T @ dy[e - n : e] for n, e in zip(sizes, ends, strict=True)])
    np.testing.assert_allclose(dx, per_group(dy, w.transpose(0, 2, 1), sizes), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-4)
