"""Qwen3-Omni Thinker pipeline: clips + requests -> chat template + processor -> AuT + fusion -> MoE decoding.

    pipe = load("checkpoints/qwen3-omni")  # HF folder (thinker weights suffice) or its omni_jax conversion
    inputs = pipe.prepare([clip])  # default request: "Transcribe the input speech."
    print(pipe.decode(pipe.generate(inputs, max_new_tokens=64)))

Generation stops at `<|im_end|>` (the config's im_end_token_id, transformers' thinker EOS). On CPU the
thinker decodes in `decoder.cpu_layout` (omni_jax.families.base.decode_layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from omni_jax.families.base import BasePipeline, decode_layout, load_checkpoint
from omni_jax.families.qwen3_omni import system as thinker
from omni_jax.families.qwen3_omni.checkpoint import MAPS
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor
from omni_jax.inference.sampling import GREEDY, Sampling

DEFAULT_PROMPT = "Transcribe the input speech."
IM_END = 151645


def conversations(audios: list[np.ndarray], prompts: list[str | None] | None) -> list[list[dict]]:
    """One user turn per clip: the audio, then its request (None: DEFAULT_PROMPT)."""
    prompts = [None] * len(audios) if prompts is None else list(prompts)
    if not audios or len(prompts) != len(audios):
        raise ValueError(
            f"need one prompt per audio and at least one audio: {len(audios)} audios, {len(prompts)} prompts"
        )
    return [
        [{"role": "user", "content": [{"type": "audio", "audio": np.asarray(a, np.float32)},
                                      {"type": "text", "text": DEFAULT_PROMPT if p is None else p}]}]
        for a, p in zip(audios, prompts, strict=True)
    ]  # fmt: skip


class Pipeline(BasePipeline):
    """A loaded Qwen3-Omni thinker: config, params, processor and the EOS / pad ids."""

    system = thinker

    def prepare(
        self, audios: list[np.ndarray], prompts: list[str | None] | None = None
    ) -> dict[str, np.ndarray]:
        """16-kHz clips and one request each -> numpy model inputs (left-padded batch)."""
        chats = conversations(audios, prompts)
        return self.processor.apply_chat_template(
            chats, tokenize=True, add_generation_prompt=True, return_dict=True
        )

    def generate(
        self, inputs: dict, *, max_new_tokens: int, sampling: Sampling = GREEDY, seed: int = 0
    ) -> np.ndarray:
        """New token ids b n (finished rows padded with the pad id; n stops once every row is done)."""
        ids = super().generate(inputs, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed)
        done = np.isin(ids, self.eos_ids).cumsum(1) > 0
        steps = int((~done).sum(1).max()) + 1  # up to the last row's EOS
        return ids[:, :steps]


def thinker_stop_ids(path: Path, hf_config: dict) -> tuple[tuple[int, ...], int]:
    """(EOS ids, pad id): `<|im_end|>` as transformers' Qwen3-Omni generate; pad from generation_config.json,
    else the EOS (transformers' fallback)."""
    eos = int(hf_config.get("im_end_token_id", IM_END))
    file = path / "generation_config.json"
    pad = json.loads(file.read_text()).get("pad_token_id") if file.is_file() else None
    return (eos,), eos if pad is None else int(pad)


def load(path, *, dtype=None) -> Pipeline:
    """An HF Qwen3-Omni folder (`model_type` qwen3_omni_moe) or its omni_jax conversion; only the thinker and
    its audio encoder are used."""
    path, hf_config, config, params = load_checkpoint(path, MAPS, thinker, thinker.ThinkerConfig, dtype)
    params = {
        "audio_encoder": params["audio_encoder"],
        "thinker": decode_layout(params["thinker"], config.text),
        **{k: params[k] for k in ("vision_encoder",) if k in params},
    }
    return Pipeline(
        config, params, Qwen3OmniProcessor.from_pretrained(path), *thinker_stop_ids(path, hf_config)
    )
