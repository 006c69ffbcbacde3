"""Qwen3-Omni against transformers: logits and greedy tokens of Qwen3OmniMoeThinkerForConditionalGeneration,
the whole speech chain of Qwen3OmniMoeForConditionalGeneration (`compare_generate(..., return_audio=True)`:
text tokens, all codebooks, waveform SNR), and the per-stage table of `python -m omni_jax.parity`
(processor, features, audio encoder, fusion, positions, prefill logits, greedy tokens). The model stages
get the reference processor's tensors on both sides, so each row measures one stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.families.base import decode_layout
from omni_jax.families.qwen3_omni import pipeline, speech
from omni_jax.families.qwen3_omni import system as thinker
from omni_jax.families.qwen3_omni.checkpoint import MAPS
from omni_jax.families.qwen3_omni.positions import rope_index
from omni_jax.models import aut_encoder
from omni_jax.parity import core
from omni_jax.parity.reference import generate_case
from omni_jax.processing.common import feature_config
from omni_jax.processing.tokenizer import load_chat_template


def from_torch(module: Any) -> tuple[thinker.ThinkerConfig, dict]:
    """Config and parameters of a transformers Qwen3OmniMoeThinkerForConditionalGeneration (its in-memory
    keys: fused experts), vision tower included."""
    cmap = next(m for m in MAPS if m.model_type == "qwen3_omni_moe_thinker")
    params = cmap.state_to_params(module.state_dict(), module.config.to_dict())
    return thinker.ThinkerConfig.from_hf(module.config), jax.tree.map(jnp.asarray, params)


def omni_from_torch(module: Any) -> tuple[tuple[thinker.ThinkerConfig, speech.SpeechConfig], dict]:
    """((ThinkerConfig, SpeechConfig), params) of a speaking Qwen3OmniMoeForConditionalGeneration (its
    in-memory keys), the decoders in the pipeline's decode layout."""
    params = jax.tree.map(jnp.asarray, MAPS[0].state_to_params(module.state_dict(), module.config.to_dict()))
    config, speech_config = (
        thinker.ThinkerConfig.from_hf(module.config),
        speech.SpeechConfig.from_hf(module.config),
    )
    params["thinker"] = decode_layout(params["thinker"], config.text)
    params["talker"] = speech.decode_layout(params["talker"], speech_config.talker)
    return (config, speech_config), params


def reference_speech(model, inputs: dict, max_new_tokens: int, speaker: str, **talker_kwargs):
    """transformers' speech generate with greedy thinker and talker: (new ids b T, codes b G N, per-row
    waveforms); the codes are the ones its Code2Wav decodes."""
    import torch

    seen = {}
    decode = model.code2wav.chunked_decode

    def record(codes, **kw):
        seen["codes"] = codes.numpy()
        return decode(codes, **kw)

    given = {k: torch.as_tensor(v) for k, v in inputs.items()}
    with torch.no_grad(), mock.patch.object(model.code2wav, "chunked_decode", record):
        ids, wav = model.generate(
            **given, speaker=speaker, return_audio=True, thinker_max_new_tokens=max_new_tokens,
            thinker_do_sample=False, talker_do_sample=False, **talker_kwargs,
        )  # fmt: skip
    waves = [w.reshape(-1).numpy() for w in (wav if isinstance(wav, list) else [wav])]
    return ids[:, given["input_ids"].shape[1] :].numpy(), seen["codes"], waves


def _speech_case(model, input_ids, attention_mask, max_new_tokens, *, speaker="Ethan", **kwargs):
    """compare_generate(..., return_audio=True): both chains greedy with the same talker_* settings."""
    talker = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("talker_")}
    talker.pop("talker_do_sample", None)
    inputs = core.numpy_inputs(dict(input_ids=input_ids, attention_mask=attention_mask, **kwargs))
    ref_ids, ref_codes, ref_waves = reference_speech(model, inputs, max_new_tokens, speaker, **talker)
    (config, speech_config), params = omni_from_torch(model)
    eos = (model.config.im_end_token_id,)
    pad = model.thinker.generation_config.pad_token_id
    pad = eos[0] if pad is None else pad
    ids = thinker.generate(params, config, inputs, max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=pad)
    ids = core.trim_to(ref_ids, np.asarray(ids), pad)
    talker_max, settings = pipeline.talker_settings({**talker, "talker_do_sample": False})
    prompt = speech.prompt_for(params, config, speech_config, inputs, ids, speaker=speaker, thinker_eos=eos)
    tokens, frames = speech.talk(params, speech_config, prompt, max_new_tokens=talker_max, settings=settings)
    codec_eos = speech_config.talker.codec_id("eos")
    waves = speech.waveforms(params["code2wav"], speech_config.code2wav, tokens, frames, codec_eos)
    lengths = speech.frame_lengths(tokens, frames, codec_eos)
    if len(frames) > 1:  # transformers zeroes a batch's codes past each row's codec_eos
        frames = np.where(np.arange(frames.shape[-1]) < lengths[:, None, None], frames, 0)
    return core.speech_report(type(model).__name__, (ref_ids, ids), (ref_codes, frames), (ref_waves, waves))


def _logits_case(module, input_ids, attention_mask=None, **inputs):
    """Logits of every valid position (padded query rows zeroed on both sides); `inputs` are the other model
    inputs (audio features, pixel values and grids, video_second_per_grid, use_audio_in_video)."""
    import torch

    config, params = from_torch(module)
    inputs = core.numpy_inputs(dict(input_ids=input_ids, attention_mask=attention_mask, **inputs))
    given = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
    with torch.no_grad():
        ref = module(**given).logits.float().numpy()
    ours = np.asarray(thinker.forward(params, config, inputs).logits)
    return core.masked_rows(ref, ours, attention_mask)


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


def stages(hf_dir, audios, prompts=None, *, max_new_tokens: int = 24) -> list[core.Report]:
    """Per-stage comparison with transformers' Qwen3OmniMoeProcessor and the thinker of
    Qwen3OmniMoeForConditionalGeneration loaded from `hf_dir` (float32): processor, features, audio encoder,
    fusion, positions, prefill logits, greedy tokens."""
    import torch
    import transformers

    model = transformers.Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        hf_dir, dtype=torch.float32, enable_audio_output=False
    ).thinker.eval()
    pipe = pipeline.load(hf_dir, dtype="float32")
    chats = pipeline.conversations(audios, prompts)
    ref = reference_processor(hf_dir).apply_chat_template(
        chats, tokenize=True, add_generation_prompt=True, return_dict=True,
        processor_kwargs={"padding": True, "return_tensors": "np"},
    )  # fmt: skip
    ref = {k: np.asarray(v) for k, v in ref.items()}
    ours = pipe.prepare(audios, prompts)
    same = all(k in ours and np.array_equal(ours[k], ref[k]) for k in ref if k != "input_features")
    reports = [
        core.exact_report("prompt ids + masks", same, ref["input_ids"].shape),
        core.report("features (log-mel)", ref["input_features"], ours["input_features"], core.MODULE_ATOL),
    ]
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
    reports.append(core.report("audio encoder (AuT)", encoded.numpy(), audio, core.MODULE_ATOL))
    prompt = thinker.prepare_prompt(p, c, ref)
    embeds = core.masked_rows(out.hidden_states[0].numpy(), np.asarray(prompt.embeds), mask)
    reports.append(core.report("fusion (input embeddings)", *embeds, core.MODULE_ATOL))
    positions, _ = rope_index(c.tokens, ref["input_ids"], mask, audio_lengths=lengths)
    positions = core.masked_rows(ref_pos.numpy().transpose(1, 2, 0), positions.transpose(1, 2, 0), mask)
    reports.append(core.report("MRoPE positions", *positions, 0.0))
    logits = core.masked_rows(out.logits.numpy(), np.asarray(thinker.forward(p, c, ref).logits), mask)
    reports.append(core.report("prefill logits", *logits, core.LOGITS_ATOL))
    reference = new[:, ref["input_ids"].shape[1] :].numpy()
    tokens = pipe.generate(ref, max_new_tokens=max_new_tokens)
    same = reference.shape == tokens.shape and np.array_equal(reference, tokens)
    name = f"greedy tokens ({reference.shape[1]} new, {'identical' if same else 'DIFFERENT'})"
    return [*reports, core.exact_report(name, same, reference.shape)]


TABLE = core.ParityTable(
    cases={"Qwen3OmniMoeThinkerForConditionalGeneration": core.ParityCase(_logits_case, core.LOGITS_ATOL)},
    generate={"Qwen3OmniMoeThinkerForConditionalGeneration": generate_case(from_torch, thinker.generate)},
    from_torch={
        "Qwen3OmniMoeThinkerForConditionalGeneration": from_torch,
        "Qwen3OmniMoeForConditionalGeneration": omni_from_torch,
    },
    speech={"Qwen3OmniMoeForConditionalGeneration": _speech_case},
    stages=stages,
)
