"""Qwen3-Omni Thinker pipeline: clips + requests -> chat template + processor -> AuT + fusion -> MoE decoding.

    pipe = load("checkpoints/qwen3-omni")  # HF folder (thinker weights suffice) or its omni_jax conversion
    inputs = pipe.prepare([clip])  # default request: "Transcribe the input speech."
    print(pipe.decode(pipe.generate(inputs, max_new_tokens=64)))

Generation stops at `<|im_end|>` (the config's im_end_token_id, transformers' thinker EOS). `parity_stages`
compares every stage with transformers on the same clips; the model stages get the reference processor's
tensors on both sides, so each row measures one stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np

from omni_jax.inference.sampling import GREEDY, Sampling
from omni_jax.models import aut_encoder
from omni_jax.models import qwen3_omni_thinker as thinker
from omni_jax.models.decoder import masked_rows
from omni_jax.models.thinker_positions import rope_index
from omni_jax.parity import LOGITS_ATOL, MODULE_ATOL, Report, report
from omni_jax.pipelines import exact_report
from omni_jax.pipelines.base import BasePipeline, load_checkpoint
from omni_jax.processing import Qwen3OmniProcessor
from omni_jax.processing.common import feature_config
from omni_jax.processing.tokenizer import load_chat_template

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

    model = thinker

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


def generation_ids(path: Path, hf_config: dict) -> tuple[tuple[int, ...], int]:
    """(EOS ids, pad id): `<|im_end|>` as transformers' Qwen3-Omni generate; pad from generation_config.json,
    else the EOS (transformers' fallback)."""
    eos = int(hf_config.get("im_end_token_id", IM_END))
    file = path / "generation_config.json"
    pad = json.loads(file.read_text()).get("pad_token_id") if file.is_file() else None
    return (eos,), eos if pad is None else int(pad)


def load(path, *, dtype=None) -> Pipeline:
    """An HF Qwen3-Omni folder (`model_type` qwen3_omni_moe) or its omni_jax conversion; only the thinker and
    its audio encoder are used."""
    path, hf_config, config, params = load_checkpoint(path, thinker, thinker.ThinkerConfig, dtype)
    params = {name: params[name] for name in thinker.param_specs(config)}
    return Pipeline(
        config, params, Qwen3OmniProcessor.from_pretrained(path), *generation_ids(path, hf_config)
    )


# ---------------------------------------------------------------- parity with transformers


def reference_processor(hf_dir):
    """transformers' Qwen3OmniMoeProcessor for text + audio: its image and video processors (which need
    torchvision) are left out."""
    import transformers

    hf_dir = Path(hf_dir)
    _, features = feature_config(hf_dir)
    with mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class", lambda *_: None):
        return transformers.Qwen3OmniMoeProcessor(
            image_processor=None,
            video_processor=None,
            feature_extractor=transformers.WhisperFeatureExtractor(**features),
            tokenizer=transformers.AutoTokenizer.from_pretrained(hf_dir),
            chat_template=load_chat_template(hf_dir),
        )


def parity_stages(hf_dir, audios, prompts=None, *, max_new_tokens: int = 24) -> list[Report]:
    """Per-stage comparison with transformers' Qwen3OmniMoeProcessor and the thinker of
    Qwen3OmniMoeForConditionalGeneration loaded from `hf_dir` (float32): processor, features, audio encoder,
    fusion, positions, prefill logits, greedy tokens."""
    import torch
    import transformers

    model = transformers.Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        hf_dir, dtype=torch.float32, enable_audio_output=False
    ).thinker.eval()
    pipe = load(hf_dir, dtype="float32")
    chats = conversations(audios, prompts)
    ref = reference_processor(hf_dir).apply_chat_template(
        chats, tokenize=True, add_generation_prompt=True, return_dict=True,
        processor_kwargs={"padding": True, "return_tensors": "np"},
    )  # fmt: skip
    ref = {k: np.asarray(v) for k, v in ref.items()}
    ours = pipe.prepare(audios, prompts)
    exact = [k for k in ref if k != "input_features"]
    reports = [
        exact_report("prompt ids + masks", all(k in ours and np.array_equal(ours[k], ref[k]) for k in exact),
               ref["input_ids"].shape),
        report("features (log-mel)", ref["input_features"], ours["input_features"], MODULE_ATOL),
    ]  # fmt: skip
    batch = {k: torch.as_tensor(v) for k, v in ref.items()}
    mask, lengths = ref["attention_mask"], ref["feature_attention_mask"].sum(1)
    with torch.no_grad():
        encoded = model.get_audio_features(
            batch["input_features"], batch["feature_attention_mask"]
        ).last_hidden_state
        out = model(**batch, output_hidden_states=True)
        ref_pos, _ = model.get_rope_index(
            batch["input_ids"], None, None, batch["attention_mask"], False, torch.as_tensor(lengths)
        )
        new = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             eos_token_id=list(pipe.eos_ids), pad_token_id=pipe.pad_id)  # fmt: skip
    p, c = pipe.params, pipe.config
    audio = aut_encoder.pack(*aut_encoder.encode(p["audio_encoder"], c.audio, ref["input_features"], lengths))
    reports.append(report("audio encoder (AuT)", encoded.numpy(), audio, MODULE_ATOL))
    prompt = thinker.prepare_prompt(p, c, ref)
    embeds = masked_rows(out.hidden_states[0].numpy(), np.asarray(prompt.embeds), mask)
    reports.append(report("fusion (input embeddings)", *embeds, MODULE_ATOL))
    positions, _ = rope_index(c.tokens, ref["input_ids"], mask, audio_lengths=lengths)
    positions = masked_rows(ref_pos.numpy().transpose(1, 2, 0), positions.transpose(1, 2, 0), mask)
    reports.append(report("MRoPE positions", *positions, 0.0))
    logits = masked_rows(out.logits.numpy(), np.asarray(thinker.forward(p, c, ref).logits), mask)
    reports.append(report("prefill logits", *logits, LOGITS_ATOL))
    reference = new[:, ref["input_ids"].shape[1] :].numpy()
    tokens = pipe.generate(ref, max_new_tokens=max_new_tokens)
    same = reference.shape == tokens.shape and np.array_equal(reference, tokens)
    name = f"greedy tokens ({reference.shape[1]} new, {'identical' if same else 'DIFFERENT'})"
    return [*reports, exact_report(name, same, reference.shape)]
