"""`python -m omni_jax.convert`: see omni_jax.cli.convert."""

from omni_jax.cli.convert import main

raise SystemExit(main())
