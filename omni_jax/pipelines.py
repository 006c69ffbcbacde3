"""`omni_jax.pipelines.load_pipeline`: the family registry's (omni_jax.families.registry)."""

from omni_jax.families.registry import load_pipeline

__all__ = ["load_pipeline"]
