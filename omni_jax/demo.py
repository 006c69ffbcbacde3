"""`python -m omni_jax.demo` (omni_jax.cli.demo); `tiny_checkpoint` as before (omni_jax.testing)."""

from omni_jax.cli.demo import main
from omni_jax.testing.checkpoints import shipped_speech, tiny_checkpoint

__all__ = ["main", "shipped_speech", "tiny_checkpoint"]

if __name__ == "__main__":
    raise SystemExit(main())
