"""Stateless layers: linear, norms, activations, convolutions. Activations are channels-last."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from omni_jax.nn.packed import PackedKernel, packed_matmul
from omni_jax.nn.params import ParamSpec

# ---------------------------------------------------------------- specs


def linear_spec(d_in: int, d_out: int, *, bias: bool = True, axes=("embed", "mlp"), scale=0.02) -> dict:
    spec = {"kernel": ParamSpec((d_in, d_out), axes, scale=scale)}
    if bias:
        spec["bias"] = ParamSpec((d_out,), (axes[1],), init="zeros")
    return spec


def layer_norm_spec(d: int, axis: str | None = "embed") -> dict:
    return {"scale": ParamSpec((d,), (axis,), init="ones"), "bias": ParamSpec((d,), (axis,), init="zeros")}


def rms_norm_spec(d: int, axis: str | None = "embed") -> dict:
    return {"scale": ParamSpec((d,), (axis,), init="ones")}


def conv1d_spec(c_in: int, c_out: int, kernel: int, *, groups: int = 1, bias: bool = True) -> dict:
    """Kernel layout (K, C_in/groups, C_out), the JAX WIO layout."""
    spec = {"kernel": ParamSpec((kernel, c_in // groups, c_out), (None, None, "conv_out"))}
    if bias:
        spec["bias"] = ParamSpec((c_out,), ("conv_out",), init="zeros")
    return spec


def conv2d_spec(c_in: int, c_out: int, kernel: tuple[int, int], *, bias: bool = True) -> dict:
    """Kernel layout HWIO."""
    spec = {"kernel": ParamSpec((*kernel, c_in, c_out), (None, None, None, "conv_out"))}
    if bias:
        spec["bias"] = ParamSpec((c_out,), ("conv_out",), init="zeros")
    return spec


# ---------------------------------------------------------------- functions


def linear(p: dict, x: jax.Array, precision=None) -> jax.Array:
    """x @ kernel (+ bias) (+ lora_scale (x @ lora_a) @ lora_b when `p` carries LoRA adapters: training).
    x: ... d_in -> ... d_out. A `PackedKernel` runs the CPU panel matmul."""
    if isinstance(p["kernel"], PackedKernel):
        y = packed_matmul(x, p["kernel"])
    else:
        y = _rows_matmul(x, p["kernel"], precision)
    if "bias" in p:
        y = y + p["bias"].astype(y.dtype)
    if "lora_a" in p:
        low = _rows_matmul(_rows_matmul(x, p["lora_a"], precision), p["lora_b"], precision)  # ... d_out
        y = y + p["lora_scale"].astype(y.dtype) * low
    return y


def _rows_matmul(x: jax.Array, kernel: jax.Array, precision) -> jax.Array:
    """x ... d_in @ kernel as one 2-D matmul over the flattened rows, so that the kernel's gradient contracts
    one axis: XLA:CPU runs a dot over two contracting axes (b, t) 1.6x slower. -> ... d_out."""
    y = jnp.matmul(x.reshape(-1, x.shape[-1]), kernel.astype(x.dtype), precision=precision)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def layer_norm(p: dict, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last axis, statistics in float32."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(x.dtype)


def rms_norm(p: dict, x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """HF order: normalise in float32, cast back to the input dtype, then multiply by the weight."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + eps)
    return p["scale"] * y.astype(x.dtype)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation HF calls `name` (ACT2FN)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}") from None


def conv1d(
    p: dict,
    x: jax.Array,
    *,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    groups: int = 1,
    precision=None,
) -> jax.Array:
    """x: b t c_in -> b t' c_out. `padding` is zero padding (left, right) or symmetric."""
    pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
    w = p["kernel"].astype(x.dtype)
    if groups == 1:
        y = _conv1d_tap_grads(x, w, stride, pad, dilation, precision)
    else:
        y = _conv1d_xla(x, w, stride, pad, dilation, groups, precision)
    if "bias" in p:
        y = y + p["bias"].astype(y.dtype)
    return y


def _conv1d_xla(x, w, stride, pad, dilation, groups, precision):
    return jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=(stride,),
        padding=(pad,),
        rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=groups,
        precision=precision,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv1d_tap_grads(x, w, stride, pad, dilation, precision):
    """XLA's conv forward; its kernel gradient as one matmul per tap. XLA CPU's own kernel-gradient conv (a
    window as long as the sequence) can take seconds where the matmuls take milliseconds (Whisper's convs
    under training: ~10 s each)."""
    return _conv1d_xla(x, w, stride, pad, dilation, 1, precision)


def _conv1d_tap_grads_fwd(x, w, stride, pad, dilation, precision):
    return _conv1d_xla(x, w, stride, pad, dilation, 1, precision), (x, w)


def _conv1d_tap_grads_bwd(stride, pad, dilation, precision, residuals, dy):
    x, w = residuals  # b t c_in, k c_in c_out; dy: b n c_out
    _, input_grad = jax.vjp(lambda x: _conv1d_xla(x, w, stride, pad, dilation, 1, precision), x)
    xp = jnp.pad(x, ((0, 0), pad, (0, 0)))
    n = dy.shape[1]

    def tap(j):  # the input rows tap j meets: b n c_in
        return jax.lax.slice_in_dim(xp, j * dilation, j * dilation + (n - 1) * stride + 1, stride, axis=1)

    dw = [jnp.einsum("bnc,bno->co", tap(j), dy, precision=precision) for j in range(w.shape[0])]
    return input_grad(dy)[0], jnp.stack(dw).astype(w.dtype)


_conv1d_tap_grads.defvjp(_conv1d_tap_grads_fwd, _conv1d_tap_grads_bwd)


def conv2d(
    p: dict, x: jax.Array, *, stride: tuple[int, int] = (1, 1), padding=((0, 0), (0, 0)), precision=None
) -> jax.Array:
    """x: b h w c_in -> b h' w' c_out (NHWC, HWIO kernel)."""
    y = jax.lax.conv_general_dilated(
        x,
        p["kernel"].astype(x.dtype),
        window_strides=stride,
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )
    if "bias" in p:
        y = y + p["bias"].astype(y.dtype)
    return y


# ---------------------------------------------------------------- transposed conv, SnakeBeta


def conv_transpose1d_spec(c_in: int, c_out: int, kernel: int, *, bias: bool = True) -> dict:
    """Kernel layout (K, C_in, C_out): torch's (C_in, C_out, K) transposed, not flipped."""
    spec = {"kernel": ParamSpec((kernel, c_in, c_out), (None, None, "conv_out"))}
    if bias:
        spec["bias"] = ParamSpec((c_out,), ("conv_out",), init="zeros")
    return spec


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PolyphaseKernel:
    """A transposed-conv kernel (K, c_in, c_out) laid out once as the stride-1 conv kernel
    (taps, c_in, stride * c_out) that `conv_transpose1d` runs, so a call does not re-arrange the weights."""

    taps: jax.Array
    size: int = dataclasses.field(metadata=dict(static=True))  # K
    stride: int = dataclasses.field(metadata=dict(static=True))


def polyphase(kernel: jax.Array, stride: int) -> PolyphaseKernel:
    """kernel K c_in c_out -> taps ceil(K / stride), c_in, stride c_out: phase q of tap j is
    kernel[j * stride + q], taps flipped to turn the scatter into a cross-correlation."""
    k, c_in, c_out = kernel.shape
    taps = -(-k // stride)
    w = jnp.pad(kernel, ((0, taps * stride - k), (0, 0), (0, 0))).reshape(taps, stride, c_in, c_out)
    return PolyphaseKernel(w[::-1].transpose(0, 2, 1, 3).reshape(taps, c_in, stride * c_out), k, stride)


def conv_transpose1d(p: dict, x: jax.Array, *, stride: int = 1, precision=None) -> jax.Array:
    """torch ConvTranspose1d without padding: x b t c_in -> b (t-1)*stride+K c_out. Runs as a polyphase
    stride-1 conv (one output phase per stride position), so no zeros are multiplied; a `PolyphaseKernel`
    is used as it is."""
    kernel = p["kernel"]
    if not isinstance(kernel, PolyphaseKernel):
        kernel = polyphase(kernel.astype(x.dtype), stride)
    elif kernel.stride != stride:
        raise ValueError(f"polyphase kernel laid out for stride {kernel.stride}, called with stride {stride}")
    taps = kernel.taps.shape[0]
    y = conv1d(
        {"kernel": kernel.taps.astype(x.dtype)}, x, padding=taps - 1, precision=precision
    )  # b t+taps-1 (stride c_out)
    y = y.reshape(x.shape[0], -1, kernel.taps.shape[-1] // stride)[
        :, : (x.shape[1] - 1) * stride + kernel.size
    ]
    if "bias" in p:
        y = y + p["bias"].astype(y.dtype)
    return y


def snake_beta_spec(c: int) -> dict:
    """Log-scale alpha (frequency) and beta (magnitude), initialised to 0."""
    return {name: ParamSpec((c,), ("conv_out",), init="zeros") for name in ("alpha", "beta")}


def snake_beta(p: dict, x: jax.Array) -> jax.Array:
    """x + sin^2(x e^alpha) / (e^beta + 1e-9), per channel (last axis), in HF's operation order."""
    alpha = jnp.exp(p["alpha"]).astype(x.dtype)
    inv_beta = (1.0 / (jnp.exp(p["beta"]) + 1e-9)).astype(x.dtype)
    return x + inv_beta * sin_squared(x * alpha).astype(x.dtype)


def sin_squared(x: jax.Array) -> jax.Array:
    """sin(x)^2 in float32 by Cody-Waite reduction modulo pi/2 and Cephes' sinf/cosf polynomials: within 2e-7
    of the exact value (jnp.sin: 1e-7) and about 5x faster on CPU, where XLA's sin does not vectorize."""
    x = x.astype(jnp.float32)
    k = jnp.round(x * (2 / jnp.pi))
    for part in _HALF_PI_PARTS:
        x = x - k * part
    r2 = x * x
    sin = x + x * r2 * _horner(r2, _SIN_COEFFS)
    cos = 1 - 0.5 * r2 + r2 * r2 * _horner(r2, _COS_COEFFS)
    return jnp.where(jnp.mod(k, 2) == 0, sin * sin, cos * cos)


_HALF_PI_PARTS = (1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8)  # k * part exact for the first
_SIN_COEFFS = (-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4)  # |r| <= pi/4
_COS_COEFFS = (4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5)


def _horner(x: jax.Array, coeffs: tuple[float, ...]) -> jax.Array:
    out = coeffs[-1]
    for c in coeffs[-2::-1]:
        out = c + x * out
    return out
