"""Helpers for the audio encoder tests: seeded re-randomisation and compilation counting."""

from __future__ import annotations

import contextlib

import jax

# the shape both tiny encoder test configs share (AuT and the Whisper-style encoders)
TINY_ENCODER = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64)


def randomize(module, seed: int = 1234):
    """Re-draw every parameter (default inits are too flat to exercise biases and norms): norm weights
    1 + 0.1 N(0, 1), everything else 0.1 N(0, 1). Returns the module in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm = name.endswith(".weight") and ("norm" in name or "ln_" in name)
            p.copy_((1.0 if is_norm else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


@contextlib.contextmanager
def count_compilations():
    """Yields a list that receives one entry per XLA backend compilation inside the block."""
    events: list[str] = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
