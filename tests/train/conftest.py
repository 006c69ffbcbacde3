"""Shared fixtures of the training tests: tiny AF3 / Thinker HF folders and short clips on disk."""

import json
from importlib import resources

import numpy as np
import pytest
import soundfile as sf

from omni_jax.testing.checkpoints import cached_tiny_checkpoint

THINKER_CONFIG = resources.files("omni_jax").parent / "configs" / "tiny-qwen3-omni-thinker.json"


@pytest.fixture(scope="session")
def af3_folder():
    return cached_tiny_checkpoint()


@pytest.fixture(scope="session")
def thinker_folder(tmp_path_factory):
    """A tiny Qwen3-Omni (no talker) with the router aux loss on, saved with the offline tokenizer."""
    import torch
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    from omni_jax.parity.reference import randomize
    from omni_jax.testing.tiny_tokenizer import save_tokenizer_files

    hf = json.loads(THINKER_CONFIG.read_text())
    hf["thinker_config"]["text_config"] |= {"output_router_logits": True, "router_aux_loss_coef": 0.01}
    torch.manual_seed(0)
    model = randomize(Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(**hf)))
    path = tmp_path_factory.mktemp("thinker") / "hf"
    model.save_pretrained(path)
    save_tokenizer_files(path, "qwen3_omni_moe")
    return path


def write_clips(folder, seconds=(1.0, 0.6, 0.8, 0.5), seed=0):
    """Tones plus noise of the given lengths as 16-kHz wav files; -> their names."""
    rng = np.random.default_rng(seed)
    names = []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"clip{i}.wav", wave.astype(np.float32), 16000)
        names.append(f"clip{i}.wav")
    return names
