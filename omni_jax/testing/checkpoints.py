"""Tiny random checkpoints and the shipped clip, shared by the tests, the demo and the benchmarks."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import inspect
import json
import tempfile
from pathlib import Path

from omni_jax.parity.reference import randomize
from omni_jax.testing.tiny_tokenizer import save_tokenizer_files

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "configs" / "tiny-audioflamingo3.json"
CACHE = ROOT / ".cache"


def shipped_speech() -> Path:
    """The bundled espeak-ng clip ('please call stella and ask her to bring these things with her from the
    store')."""
    return Path(str(importlib.resources.files("omni_jax") / "assets" / "speech.wav"))


def read_af3_config(config: str | Path) -> dict:
    """The HF config.json content of a tiny AudioFlamingo3 (checked by omni_jax's own Config.from_hf, which
    refuses another model_type or missing keys rather than building a default-sized model)."""
    from omni_jax.families.audioflamingo3.system import Config

    path = Path(config).expanduser()
    try:
        hf = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the config ({e})") from None
    if not isinstance(hf, dict) or hf.get("model_type") != "audioflamingo3":
        kind = hf.get("model_type") if isinstance(hf, dict) else type(hf).__name__
        raise ValueError(
            f"{path}: model_type {kind!r}; tiny checkpoints (and the demo) are built for AudioFlamingo3 "
            "configs only (model_type 'audioflamingo3', e.g. configs/tiny-audioflamingo3.json)"
        )
    Config.from_hf(hf)
    return hf


def tiny_checkpoint(folder: str | Path, config: str | Path = TINY_CONFIG, seed: int = 0) -> Path:
    """Write a random AudioFlamingo3ForConditionalGeneration of `config` (HF config.json content) and the tiny
    tokenizer into `folder`. Weights are redrawn (norm scales 1 + 0.1 N(0, 1), the rest 0.1 N(0, 1)) so that
    every path matters and greedy choices are far from ties; lm_head rows of ids the tokenizer lacks are zero,
    so generated ids always decode to text."""
    import torch
    import transformers

    from omni_jax.processing import Tokenizer

    folder = Path(folder)
    save_tokenizer_files(folder, "audioflamingo3")
    hf_config = transformers.AudioFlamingo3Config.from_dict(read_af3_config(config))
    torch.manual_seed(seed)
    model = transformers.AudioFlamingo3ForConditionalGeneration(hf_config).eval()
    randomize(model, seed)
    known = torch.tensor(sorted(Tokenizer.from_pretrained(folder).backend.get_vocab().values()))
    with torch.no_grad():
        head = model.lm_head.weight
        head.copy_(torch.zeros_like(head).index_copy_(0, known, head[known]))
    model.save_pretrained(folder)
    return folder


def cached_tiny_checkpoint(config: Path = TINY_CONFIG) -> Path:
    """The tiny HF folder of `config` under .cache/, built on first use (atomically)."""
    read_af3_config(config)
    recipe = Path(config).expanduser().read_bytes() + inspect.getsource(tiny_checkpoint).encode()
    folder = CACHE / f"{config.stem}-{hashlib.sha256(recipe).hexdigest()[:10]}"
    if not (folder / "config.json").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            built = tiny_checkpoint(Path(tmp) / "hf", config)
            with contextlib.suppress(OSError):  # another process built it first
                built.rename(folder)
    return folder
