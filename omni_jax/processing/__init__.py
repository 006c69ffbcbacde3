"""Processors (numpy, no torch): tokenizer + chat template, AudioFlamingo3 and Qwen3-Omni text + audio."""

from omni_jax.processing.audioflamingo3 import AF3ProcessorConfig, AudioFlamingo3Processor
from omni_jax.processing.qwen3_omni import Qwen3OmniProcessor, Qwen3OmniProcessorConfig
from omni_jax.processing.tiny_tokenizer import build_tokenizer, save_tokenizer_files
from omni_jax.processing.tokenizer import Tokenizer, load_chat_template, render_chat_template

__all__ = [
    "AF3ProcessorConfig",
    "AudioFlamingo3Processor",
    "Qwen3OmniProcessor",
    "Qwen3OmniProcessorConfig",
    "Tokenizer",
    "build_tokenizer",
    "load_chat_template",
    "render_chat_template",
    "save_tokenizer_files",
]
