"""The command lines: `python -m omni_jax.{generate,convert,parity,demo}` run these modules' `main`."""
