"""omni_jax: pure-functional JAX reimplementation of audio-language omni models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy exports: `omni_jax.load_pretrained` without importing jax at package import."""
    if name == "load_pretrained":
        from omni_jax.loading import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'omni_jax' has no attribute {name!r}")
