"""Test setup: 8 virtual CPU devices (so sharding tests run in CI), float32 matmuls at full precision, and
JAX's persistent compilation cache (~70 % of a test's time is XLA compiling tiny models; a rerun, or a CLI
subprocess compiling what a test already compiled, reads it from the cache)."""

import os
from pathlib import Path

# LLVM's backend optimisation off: the tiny test programs compile ~2x faster (a cold `make test` takes 10
# min, not 17); XLA's own graph optimisations and the numerics they fix stay as users run them.
FAST_COMPILE = "--xla_backend_optimization_level=0"
DEVICES = "--xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" {DEVICES} {FAST_COMPILE}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "omni_jax" / "xla-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
