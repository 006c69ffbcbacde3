"""`python -m omni_jax.generate`: see omni_jax.cli.generate."""

from omni_jax.cli.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
