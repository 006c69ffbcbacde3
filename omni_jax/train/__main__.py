"""`python -m omni_jax.train`: see omni_jax.cli.train."""

from omni_jax.cli.train import main

raise SystemExit(main())
