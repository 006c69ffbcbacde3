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
    transformers.utils.logging.disable_progress_bar()
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


TINY_OMNI_CONFIG = ROOT / "configs" / "tiny-qwen3-omni.json"


def tame_code2wav_init(module, seed: int = 0):
    """Random Code2Wav weights keeping |wav| ~ 0.4 with a little clipping (larger conv scales saturate the
    output and amplify float32 rounding chaotically)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in module.named_parameters():
            r = torch.randn(w.shape, generator=g)
            if name.endswith(("alpha", "beta")):
                w.copy_(0.1 * r)
            elif "norm" in name and name.endswith("weight"):
                w.copy_(1 + 0.1 * r)
            elif name.endswith((".scale", "gamma")):
                w.copy_(0.5 * r)
            elif ".conv." in name and name.endswith("weight"):
                w.copy_(0.65 * r / w[0].numel() ** 0.5)
            elif name.endswith("bias"):
                w.copy_(0.3 * r)
            else:
                w.copy_(0.2 * r)
    return module


def tiny_omni_model(config: str | Path = TINY_OMNI_CONFIG, seed: int = 0):
    """A random Qwen3OmniMoeForConditionalGeneration with talker and Code2Wav (float32, eval). The thinker's
    token embeddings and audio output are scaled x10 so ids and audio steer its greedy path, only ids the
    tiny tokenizer knows can be generated and `<|im_end|>`'s logit is x3 (answers end after a few tokens);
    the talker's weights are drawn at 0.2 so its codes vary, and codec_eos's logit is x6, so that greedy
    speech ends at codec_eos for some prompts and runs to the token limit for others."""
    import torch
    import transformers

    from omni_jax.processing import Tokenizer

    hf_config = transformers.Qwen3OmniMoeConfig(**json.loads(Path(config).read_text()))
    torch.manual_seed(seed)
    model = transformers.Qwen3OmniMoeForConditionalGeneration(hf_config).eval()
    randomize(model.thinker, seed)
    randomize(model.talker, seed + 1, scale=0.2)
    tame_code2wav_init(model.code2wav, seed + 2)
    thinker = model.thinker
    with tempfile.TemporaryDirectory() as tmp:
        known = sorted(
            Tokenizer.from_pretrained(save_tokenizer_files(tmp, "qwen3_omni_moe"))
            .backend.get_vocab()
            .values()
        )
    with torch.no_grad():
        for p in (
            thinker.model.language_model.embed_tokens.weight,
            *thinker.model.audio_tower.proj2.parameters(),
        ):
            p.mul_(10)
        head = thinker.lm_head.weight
        head.copy_(torch.zeros_like(head).index_copy_(0, torch.tensor(known), head[torch.tensor(known)]))
        head[hf_config.im_end_token_id] *= 3
        model.talker.codec_head.weight[hf_config.talker_config.codec_eos_token_id] *= 6
    return model


def tiny_omni_checkpoint(folder: str | Path, config: str | Path = TINY_OMNI_CONFIG, seed: int = 0) -> Path:
    """`tiny_omni_model` saved with the tiny tokenizer into `folder` (an HF Qwen3-Omni folder that speaks)."""
    folder = Path(folder)
    tiny_omni_model(config, seed).save_pretrained(folder)
    save_tokenizer_files(folder, "qwen3_omni_moe")
    return folder
