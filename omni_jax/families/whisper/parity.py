"""Whisper against transformers: WhisperDecoder hidden states, WhisperForConditionalGeneration logits and its
greedy `generate` tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.convert import ctranslate2
from omni_jax.families.whisper import pipeline, system
from omni_jax.families.whisper.checkpoint import MAPS
from omni_jax.models import whisper_decoder, whisper_encoder
from omni_jax.parity.core import (
    LOGITS_ATOL,
    MODULE_ATOL,
    ParityCase,
    ParityTable,
    Report,
    exact_report,
    report,
    trim_to,
)


def from_torch(module) -> tuple[system.Config, dict]:
    """Config (with the module's generation config) and float32 params of a live
    WhisperForConditionalGeneration."""
    params = MAPS[0].state_to_params(module.state_dict(), module.config.to_dict())
    config = system.Config.from_hf(module.config.to_dict(), module.generation_config.to_dict())
    return config, jax.tree.map(jnp.asarray, params)


def reference_model(model_dir):
    """transformers' WhisperForConditionalGeneration with a CTranslate2 folder's weights and generation
    settings (float32, eval mode)."""
    import torch
    import transformers

    from omni_jax.convert import ctranslate2

    config = ctranslate2.hf_config(model_dir)
    model = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**config)).eval()
    state = {f"model.{k}": torch.from_numpy(v) for k, v in ctranslate2.load_whisper(model_dir)[1].items()}
    model.load_state_dict(
        state | {"proj_out.weight": state["model.decoder.embed_tokens.weight"]}, strict=True
    )
    generation = ctranslate2.generation_config(model_dir, config)
    model.generation_config = transformers.GenerationConfig(**generation)
    return model


def decoder_from_torch(module) -> tuple[whisper_decoder.WhisperDecoderConfig, dict]:
    """A WhisperDecoder (keys relative to it)."""
    from omni_jax.convert.keymap import hf_to_params

    config = whisper_decoder.WhisperDecoderConfig.from_hf(module.config)
    params = hf_to_params(
        module.state_dict(), whisper_decoder.hf_rules(config), whisper_decoder.param_specs(config)
    )
    return config, jax.tree.map(jnp.asarray, params)


def _decoder_case(module, input_ids, encoder_hidden_states):
    """WhisperDecoder's last_hidden_state against ours (the final-normed hidden states)."""
    import torch

    config, params = decoder_from_torch(module)
    with torch.no_grad():
        ref = module(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states).last_hidden_state
    ours = whisper_decoder.teacher_forced(
        params, config, input_ids.numpy(), encoder_hidden_states.numpy(), "hidden"
    )
    return ref.numpy(), np.asarray(ours)


def _logits_case(module, input_features, decoder_input_ids):
    import torch

    config, params = from_torch(module)
    with torch.no_grad():
        ref = module(input_features=input_features, decoder_input_ids=decoder_input_ids).logits
    return ref.numpy(), np.asarray(
        system.logits(params, config, input_features.numpy(), decoder_input_ids.numpy())
    )


def _generate_case(module, input_ids, attention_mask, max_new_tokens, input_features=None):
    """Greedy new tokens of transformers' Whisper `generate` (prompt and EOS stripped, pad-filled) and ours
    on the same features; input_ids and attention_mask are unused (the prompt comes from the config)."""
    import torch

    del input_ids, attention_mask
    config, params = from_torch(module)
    with torch.no_grad():
        ref = module.generate(
            input_features, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
        ).numpy()
    g = config.generation
    ours = system.generate(
        params, config, {"input_features": input_features.numpy()}, max_new_tokens=max_new_tokens
    )
    return ref, trim_to(ref, ours, g.pad_token_id)


def stages(hf_dir, audios, prompts=None, *, max_new_tokens: int = 24) -> list[Report]:
    """Per-stage comparison with transformers' WhisperFeatureExtractor and WhisperForConditionalGeneration
    (from `hf_dir`, or built from a CTranslate2 folder): features, encoder, logits, greedy tokens."""
    import torch
    import transformers

    pipe = pipeline.load(hf_dir, dtype="float32")
    if ctranslate2.is_ctranslate2_dir(hf_dir):
        model = reference_model(hf_dir)
    else:
        model = transformers.WhisperForConditionalGeneration.from_pretrained(
            hf_dir, dtype=torch.float32
        ).eval()
    extractor = transformers.WhisperFeatureExtractor(feature_size=pipe.config.encoder.num_mel_bins)
    features = extractor(list(audios), sampling_rate=16000, return_tensors="pt").input_features
    ours_features = pipe.prepare(audios, prompts)["input_features"]
    with torch.no_grad():
        encoded = model.model.encoder(features).last_hidden_state.numpy()
        tokens = model.generate(features, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        prompt = torch.tensor([pipe.config.generation.prompt] * len(tokens))
        ids = torch.cat([prompt, tokens], dim=1)
        logits = model(input_features=features, decoder_input_ids=ids).logits.numpy()
    c, params = pipe.config, pipe.params
    ours_encoded = whisper_encoder.forward(params["encoder"], c.encoder, jnp.asarray(features.numpy()))
    ours_logits = system.logits(params, c, features.numpy(), ids.numpy())
    ref_tokens = tokens.numpy()
    ours_tokens = trim_to(
        ref_tokens,
        pipe.generate({"input_features": features.numpy()}, max_new_tokens=max_new_tokens),
        c.generation.pad_token_id,
    )
    identical = ours_tokens.shape == ref_tokens.shape and np.array_equal(ours_tokens, ref_tokens)
    verdict = "identical" if identical else "DIFFERENT"
    return [
        report("features (log-mel)", features.numpy(), ours_features, MODULE_ATOL),
        report("encoder", encoded, np.asarray(ours_encoded), at_scale(encoded)),
        report("teacher-forced logits", logits, np.asarray(ours_logits), at_scale(logits)),
        exact_report(f"greedy tokens ({ref_tokens.shape[1]} new, {verdict})", identical, ref_tokens.shape),
    ]


def at_scale(reference: np.ndarray) -> float:
    """MODULE_ATOL relative to the output scale (real weights: values far above 1)."""
    return MODULE_ATOL * max(1.0, float(np.abs(reference).max()))


TABLE = ParityTable(
    cases={
        "WhisperDecoder": ParityCase(_decoder_case, MODULE_ATOL),
        "WhisperForConditionalGeneration": ParityCase(_logits_case, LOGITS_ATOL),
    },
    generate={"WhisperForConditionalGeneration": _generate_case},
    from_torch={"WhisperForConditionalGeneration": from_torch, "WhisperDecoder": decoder_from_torch},
    stages=stages,
)
