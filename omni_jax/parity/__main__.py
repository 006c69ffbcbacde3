"""`python -m omni_jax.parity`: see omni_jax.cli.parity."""

from omni_jax.cli.parity import main

raise SystemExit(main())
