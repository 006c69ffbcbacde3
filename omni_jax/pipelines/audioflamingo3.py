"""AudioFlamingo3 pipeline: clips + requests -> processor -> fused embeddings -> Qwen2 decoding -> text.

    pipe = load("checkpoints/af3")      # HF folder, or one written by `python -m omni_jax.convert`
    inputs = pipe.prepare([clip])        # default request: "Transcribe the input speech."
    print(pipe.decode(pipe.generate(inputs, max_new_tokens=64, sampling=GREEDY)))

`parity_stages` compares every stage with transformers on the same clips (processor, encoder, projector,
prefill logits, greedy tokens); the model stages get the reference processor's tensors on both sides, so each
row measures one stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from omni_jax.audio.features import SAMPLING_RATE
from omni_jax.models import audioflamingo3 as af3
from omni_jax.models import projector, whisper_encoder
from omni_jax.parity import LOGITS_ATOL, MODULE_ATOL, Report, numpy_inputs, report
from omni_jax.pipelines import exact_report
from omni_jax.pipelines.base import BasePipeline, load_checkpoint
from omni_jax.processing import AudioFlamingo3Processor

FEATURES_ATOL = MODULE_ATOL  # transformers' torch log-mel is float32 (see tests/test_processors.py)


class Pipeline(BasePipeline):
    """A loaded AF3 checkpoint: config, params, processor and the generation config's EOS / pad ids."""

    model = af3

    def prepare(
        self, audios: list[np.ndarray], prompts: list[str | None] | None = None
    ) -> dict[str, np.ndarray]:
        """16-kHz clips and one request each (None: the transcription request) -> numpy model inputs."""
        limit = self.processor.config.max_audio_len
        if long := [
            f"{i} ({len(a) / SAMPLING_RATE:.1f} s)"
            for i, a in enumerate(audios)
            if len(a) > limit * SAMPLING_RATE
        ]:
            raise ValueError(
                f"audio {', '.join(long)} past the model's limit of {limit:g} s (max_audio_len); cut it"
            )
        inputs = self.processor.apply_transcription_request(list(audios), prompt=prompts)
        dtype = self.params["encoder"]["conv1"]["kernel"].dtype
        return inputs | {"input_features": inputs["input_features"].astype(dtype)}


def generation_config(path: Path, hf_config: dict) -> dict:
    """generation_config.json, else the text config's token ids (what transformers derives from it)."""
    file = path / "generation_config.json"
    return json.loads(file.read_text()) if file.is_file() else hf_config.get("text_config", {})


def load(path, *, dtype=None) -> Pipeline:
    """An HF AudioFlamingo3 folder or its omni_jax conversion (which keeps the config, tokenizer and
    processor files)."""
    path, hf_config, config, params = load_checkpoint(path, af3, af3.Config, dtype)
    eos, pad = af3.generation_ids(generation_config(path, hf_config))
    return Pipeline(config, params, AudioFlamingo3Processor.from_pretrained(path), eos, pad)


# ---------------------------------------------------------------- parity with transformers


def _reference(model, batch, *, max_new_tokens: int, eos_ids, pad_id) -> dict[str, np.ndarray]:
    """transformers' encoder output, projected frames, prefill logits and greedy new tokens."""
    import torch

    with torch.no_grad():
        encoded = model.model.audio_tower(
            batch["input_features"], input_features_mask=batch["input_features_mask"]
        ).last_hidden_state
        out = {"encoder": encoded, "projector": model.model.multi_modal_projector(encoded)}
        out["logits"] = model(**batch).logits
        out["tokens"] = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=list(eos_ids) or None, pad_token_id=pad_id,
        )[:, batch["input_ids"].shape[1] :]  # fmt: skip
    return {k: v.numpy() for k, v in out.items()}


def parity_stages(hf_dir, audios, prompts=None, *, max_new_tokens: int = 24) -> list[Report]:
    """Per-stage comparison with transformers' AudioFlamingo3Processor and ...ForConditionalGeneration loaded
    from `hf_dir` (float32): features, encoder, projector, prefill logits, greedy tokens."""
    import torch
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(hf_dir)
    model = transformers.AudioFlamingo3ForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    pipe = load(hf_dir, dtype="float32")
    batch = processor.apply_transcription_request([np.asarray(a, np.float32) for a in audios], prompt=prompts)
    ref, ours = numpy_inputs(dict(batch)), pipe.prepare(audios, prompts)
    same = all(k in ours and np.array_equal(ours[k], ref[k]) for k in ref if k != "input_features")
    out = _reference(
        model.eval(), batch, max_new_tokens=max_new_tokens, eos_ids=pipe.eos_ids, pad_id=pipe.pad_id
    )
    params, config = pipe.params, pipe.config
    hidden, _ = whisper_encoder.encode(
        params["encoder"], config.encoder, ref["input_features"], ref["input_features_mask"]
    )
    projected = projector.forward(params["projector"], config.projector, jax.numpy.asarray(out["encoder"]))
    logits = af3.masked_rows(out["logits"], af3.logits(params, config, ref), ref["attention_mask"])
    tokens = af3.trim_to(out["tokens"], pipe.generate(ref, max_new_tokens=max_new_tokens), pipe.pad_id)
    identical = tokens.shape == out["tokens"].shape and np.array_equal(tokens, out["tokens"])
    verdict = "identical" if identical else "DIFFERENT"
    return [
        exact_report("prompt ids + masks", same, ref["input_ids"].shape),
        report("features (log-mel)", ref["input_features"], ours["input_features"], FEATURES_ATOL),
        report("encoder", out["encoder"], np.asarray(hidden), MODULE_ATOL),
        report("projector", out["projector"], np.asarray(projected), MODULE_ATOL),
        report("prefill logits", *logits, LOGITS_ATOL),
        exact_report(
            f"greedy tokens ({out['tokens'].shape[1]} new, {verdict})", identical, out["tokens"].shape
        ),
    ]
