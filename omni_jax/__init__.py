"""omni_jax: pure-functional JAX reimplementation of audio-language omni models."""

__version__ = "0.1.0"
