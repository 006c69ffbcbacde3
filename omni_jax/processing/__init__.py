"""Text processing shared by the families' processors (numpy, no torch): tokenizer and chat templates."""

from omni_jax.processing.tokenizer import Tokenizer, load_chat_template, render_chat_template

__all__ = ["Tokenizer", "load_chat_template", "render_chat_template"]
