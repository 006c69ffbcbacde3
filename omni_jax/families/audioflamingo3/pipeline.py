"""AudioFlamingo3 pipeline: clips + requests -> processor -> fused embeddings -> Qwen2 decoding -> text.

    pipe = load("checkpoints/af3")      # HF folder, or one written by `python -m omni_jax.convert`
    inputs = pipe.prepare([clip])        # default request: "Transcribe the input speech."
    print(pipe.decode(pipe.generate(inputs, max_new_tokens=64, sampling=GREEDY)))

On CPU the decoder runs in `decoder.cpu_layout` (omni_jax.families.base.decode_layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from omni_jax.families.audioflamingo3 import system as af3
from omni_jax.families.audioflamingo3.checkpoint import MAPS
from omni_jax.families.audioflamingo3.processor import AudioFlamingo3Processor
from omni_jax.families.base import BasePipeline, decode_layout, load_checkpoint
from omni_jax.inference.loop import stop_ids
from omni_jax.processing.common import as_clips, check_audio_length


class Pipeline(BasePipeline):
    """A loaded AF3 checkpoint: config, params, processor and the generation config's EOS / pad ids."""

    system = af3

    def prepare(
        self, audios: list[np.ndarray], prompts: list[str | None] | None = None
    ) -> dict[str, np.ndarray]:
        """16-kHz clips (or audio file paths) and one request each (None: the transcription request) -> numpy
        model inputs."""
        clips = as_clips(audios, name="audios")
        check_audio_length(clips, self.processor.config.max_audio_len)
        inputs = self.processor.apply_transcription_request(clips, prompt=prompts)
        dtype = self.params["encoder"]["conv1"]["kernel"].dtype
        return inputs | {"input_features": inputs["input_features"].astype(dtype)}


def generation_config(path: Path, hf_config: dict) -> dict:
    """generation_config.json, else the text config's token ids (what transformers derives from it)."""
    file = path / "generation_config.json"
    return json.loads(file.read_text()) if file.is_file() else hf_config.get("text_config", {})


def load(path, *, dtype=None) -> Pipeline:
    """An HF AudioFlamingo3 folder or its omni_jax conversion (which keeps the config, tokenizer and
    processor files)."""
    path, hf_config, config, params = load_checkpoint(path, MAPS, af3, af3.Config, dtype)
    params = {**params, "decoder": decode_layout(params["decoder"], config.decoder)}
    eos, pad = stop_ids(generation_config(path, hf_config))
    return Pipeline(config, params, AudioFlamingo3Processor.from_pretrained(path), eos, pad)
