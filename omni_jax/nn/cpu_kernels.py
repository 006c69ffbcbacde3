"""float32 CPU kernels (`kernels/cpu.cc`), as XLA FFI custom calls built on first use.

`packed_matmul` (weights as contiguous column panels, `nn.packed`), `routed_experts` (a SwiGLU MoE over
packed experts that reads only the experts tokens picked), `decode_attention` (one query token against a
layer of the stacked KV cache, read in place) and `segment_attention` (attention inside segments, the logits
of 8 query rows at a time kept in cache). The C++ source is compiled with the host's C++
compiler into `$OMNI_JAX_CACHE` (default `~/.cache/omni_jax`), keyed by source, compiler flags, jax version
and CPU features. Callers fall back to plain XLA when `ready()` is False (no compiler, or
`OMNI_JAX_CPU_KERNELS=0`) and on other backends.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("kernels") / "cpu.cc"
TARGETS = {
    "omni_jax_packed_matmul": "OmniJaxPackedMatmul",
    "omni_jax_decode_attention": "OmniJaxDecodeAttention",
    "omni_jax_routed_experts": "OmniJaxRoutedExperts",
    "omni_jax_segment_attention": "OmniJaxSegmentAttention",
}
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC", "-w")


def on_cpu(kernel, fallback, *args):
    """`kernel(*args)` when lowered for CPU and the kernels are built, else `fallback(*args)`."""
    if not ready():
        return fallback(*args)
    return jax.lax.platform_dependent(*args, cpu=kernel, default=fallback)


def _call(target: str, shape: tuple[int, ...], *operands, **attributes) -> jax.Array:
    """The float32 result of shape `shape` of custom call `target`."""
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*operands, **attributes)


def packed_matmul(x: jax.Array, panels: jax.Array, d_out: int) -> jax.Array:
    """x m k (float32) @ panels g k 32 -> m d_out."""
    return _call("omni_jax_packed_matmul", (x.shape[0], d_out), x, panels)


def routed_experts(x, gate_up, down, experts, weights) -> jax.Array:
    """SwiGLU experts over packed kernels, gate_up E g k 32 (2f wide), down E g f 32; x n d, experts and
    weights n k (float32) -> n d: sum over k of weight * expert(x), reading only the picked experts."""
    operands = x, gate_up, down, jnp.asarray(experts, jnp.int32), weights
    return _call("omni_jax_routed_experts", x.shape, *operands)


def decode_attention(q, k_cache, v_cache, layer, start, stop, scale: float) -> jax.Array:
    """q b h d against slots [start[b], stop) of layer `layer` of caches L b s kh d (float32; layer, start
    and stop int32) -> b h d."""
    operands = q, k_cache, v_cache, layer, start, stop
    return _call("omni_jax_decode_attention", q.shape, *operands, scale=np.float32(scale))


def segment_attention(
    qkv, segments, key_block_start, cos, sin, *, block: int, span: int, rows: int, scale: float
) -> jax.Array:
    """qkv t 3 h d (float32: q, k, v packed, read in place), the rotary's cos and sin t d (rotate-half layout;
    both (0, d): none) applied to q and k, logits times `scale`; query chunk c (`rows` rows) attends to keys
    [at, at + span), at = key_block_start[c] * block clipped into [0, t - span], inside its segment.
    -> t h d."""
    t, _, h, d = qkv.shape
    operands = qkv, jnp.asarray(segments, jnp.int32), jnp.asarray(key_block_start, jnp.int32), cos, sin
    sizes = {"block": np.int64(block), "span": np.int64(span), "rows": np.int64(rows)}
    return _call("omni_jax_segment_attention", (t, h, d), *operands, **sizes, scale=np.float32(scale))


@functools.cache
def ready() -> bool:
    """Build (once per source, compiler and CPU) and register the kernels; False, with a warning, if not."""
    if os.environ.get("OMNI_JAX_CPU_KERNELS", "1") == "0":
        return False
    try:
        library = ctypes.CDLL(str(_build()))
    except (OSError, RuntimeError) as e:
        warnings.warn(f"omni_jax: CPU kernels unavailable ({e}); using plain XLA", stacklevel=3)
        return False
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return True


def _build() -> Path:
    """The compiled library in the cache folder, compiled now if absent (to a temp name, then renamed)."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), compiler, *FLAGS, jax.__version__, _cpu_signature()]).encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("OMNI_JAX_CACHE", Path.home() / ".cache" / "omni_jax"))
    library = cache / f"cpu_kernels-{key}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    command = [compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"compiling {SOURCE.name} failed: {done.stderr[-2000:]}")
    os.replace(tmp, library)
    return library


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's feature flags (Linux) or its name."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line for line in lines if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.machine() + platform.processor()
