"""Layer primitives against torch: the polyphase transposed conv, its kernel laid out per call or once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.nn.layers import conv_transpose1d, polyphase

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("kernel,stride", [(4, 2), (5, 2), (3, 3), (10, 5), (7, 3), (2, 4)])
def test_conv_transpose1d_matches_torch(kernel, stride):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = rng.standard_normal((2, 9, 6), np.float32)  # b t c_in
    w = rng.standard_normal((6, 5, kernel), np.float32)  # torch's c_in c_out K
    bias = rng.standard_normal(5, np.float32)
    want = (
        torch.nn.functional.conv_transpose1d(
            torch.from_numpy(x.transpose(0, 2, 1)), torch.from_numpy(w), torch.from_numpy(bias), stride=stride
        )
        .numpy()
        .transpose(0, 2, 1)
    )
    k = jnp.asarray(w.transpose(2, 0, 1))  # K c_in c_out
    for layout in (k, polyphase(k, stride)):
        got = jax.jit(lambda p, x: conv_transpose1d(p, x, stride=stride))({"kernel": layout, "bias": bias}, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_polyphase_kernel_refuses_another_stride():
    k = polyphase(jnp.ones((4, 2, 3)), 2)
    with pytest.raises(ValueError, match="stride 2, called with stride 4"):
        conv_transpose1d({"kernel": k}, jnp.ones((1, 5, 2)), stride=4)
