"""The transformers side of the comparisons: its generate and feature extractor run as a user would, and
the seeded re-randomisation that makes tiny random models exercise every path. torch is imported here only
inside functions."""

from __future__ import annotations

import numpy as np

from omni_jax.inference.loop import stop_ids
from omni_jax.parity.core import numpy_inputs, trim_to


def randomize(module, seed: int = 1234, scale: float = 0.1):
    """Re-draw every parameter (default inits are too flat to exercise biases and norms): norm weights
    1 + 0.1 N(0, 1), everything else scale * N(0, 1). Returns the module in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm = name.endswith(".weight") and ("norm" in name or "ln_" in name)
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if is_norm else scale * noise)
    return module.eval()


def reference_generate(module, inputs: dict, max_new_tokens: int, eos, pad) -> np.ndarray:
    """transformers' greedy new tokens (b n) for torch `inputs` (None values left out), same EOS / pad ids."""
    import torch

    given = {k: v for k, v in inputs.items() if v is not None}
    with torch.no_grad():
        out = module.generate(
            **given, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=list(eos) or None, pad_token_id=pad,
        )  # fmt: skip
    return out[:, given["input_ids"].shape[1] :].numpy()


def generate_case(from_torch, generate):
    """A parity table's generate case for a system: `case(module, input_ids, attention_mask, max_new_tokens,
    **inputs)` -> greedy new tokens (b n) of transformers' generate and of `generate(params, config, inputs,
    ...)` on the module's weights, with the EOS / pad ids of its generation config."""

    def case(module, input_ids, attention_mask, max_new_tokens, **inputs):
        config, params = from_torch(module)
        eos, pad = stop_ids(module.generation_config)
        given = dict(input_ids=input_ids, attention_mask=attention_mask, **inputs)
        reference = reference_generate(module, given, max_new_tokens, eos, pad)
        ours = generate(
            params, config, numpy_inputs(given), max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=pad
        )
        return reference, trim_to(reference, ours, pad)

    return case


def whisper_features_reference(
    waveforms,
    *,
    num_mel_bins: int = 80,
    padding: str = "max_length",
    max_samples: int = 480000,
    path: str = "numpy",
) -> tuple[np.ndarray, np.ndarray]:
    """transformers' WhisperFeatureExtractor on its numpy path (path="numpy") or its torch path ("torch")."""
    import transformers.models.whisper.feature_extraction_whisper as fx

    if path not in ("numpy", "torch"):
        raise ValueError(f"path must be 'numpy' or 'torch', got {path!r}")
    extractor = fx.WhisperFeatureExtractor(feature_size=num_mel_bins)
    clips = [np.asarray(w, np.float32) for w in waveforms]
    original = fx.is_torch_available
    fx.is_torch_available = (lambda: False) if path == "numpy" else original
    try:
        out = extractor(
            clips,
            sampling_rate=16000,
            padding=padding,
            max_length=max_samples,
            return_attention_mask=True,
            return_tensors="np",
        )
    finally:
        fx.is_torch_available = original
    return out["input_features"], out["attention_mask"]
