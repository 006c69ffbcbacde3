"""`python -m omni_jax.transcribe`: see omni_jax.cli.transcribe."""

from omni_jax.cli.transcribe import main

if __name__ == "__main__":
    raise SystemExit(main())
