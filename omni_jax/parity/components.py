"""Parity cases of the components (omni_jax.models) against the transformers classes they reimplement, and
`from_torch` for each: a live transformers module -> (config, params)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omni_jax.convert.keymap import hf_to_params
from omni_jax.inference.loop import generate, stop_ids
from omni_jax.models import aut_encoder, code2wav, decoder, vision_encoder, whisper_encoder
from omni_jax.nn.cache import left_pad_start
from omni_jax.parity.core import LOGITS_ATOL, MODULE_ATOL, ParityCase, ParityTable, masked_rows, trim_to
from omni_jax.parity.reference import reference_generate


def _module_params(module, model, config) -> dict:
    """The state dict of a live module through `model`'s key map (in-memory layout) -> float32 params."""
    return hf_to_params(module.state_dict(), model.hf_rules(config), model.param_specs(config))


def whisper_encoder_from_torch(module) -> tuple[whisper_encoder.WhisperEncoderConfig, dict]:
    """A WhisperEncoder / Qwen2AudioEncoder / AudioFlamingo3Encoder."""
    config = whisper_encoder.WhisperEncoderConfig.from_hf(module.config)
    return config, _module_params(module, whisper_encoder, config)


def aut_from_torch(module) -> tuple[aut_encoder.AuTConfig, dict]:
    config = aut_encoder.AuTConfig.from_hf(module.config)
    return config, _module_params(module, aut_encoder, config)


def vision_from_torch(module) -> tuple[vision_encoder.VisionConfig, dict]:
    config = vision_encoder.VisionConfig.from_hf(module.config)
    return config, _module_params(module, vision_encoder, config)


def code2wav_from_torch(module) -> tuple[code2wav.Config, dict]:
    config = code2wav.Config.from_hf(module.config)
    return config, _module_params(module, code2wav, config)


def decoder_from_torch(module: Any, **overrides: Any) -> tuple[decoder.Config, dict]:
    """A transformers decoder module (its state dict, in-memory layout); `overrides` replace config fields."""
    config = dataclasses.replace(decoder.Config.from_hf(module.config), **overrides)
    state = dict(module.state_dict())
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the embedding itself, shared
    if not any(k.startswith("model.") for k in state):  # a bare text model: keys without "model."
        state = {f"model.{k}": v for k, v in state.items()}
    params = hf_to_params(state, decoder.hf_rules(config), decoder.param_specs(config))
    return config, jax.tree.map(jnp.asarray, params)


def _key_lengths_from_4d(mask) -> np.ndarray:
    """Valid-key count per row from the (b, 1, t, s) bool or additive mask Qwen2AudioModel passes; the mask
    must be a key-padding prefix mask, the only kind HF builds."""
    m = np.asarray(mask)
    keep = m if m.dtype == bool else m == 0
    keep = np.broadcast_to(keep, (m.shape[0], 1, m.shape[2], m.shape[3]))[:, 0]
    keys = keep[:, 0]
    lengths = keys.sum(-1)
    if (
        not (keep == keys[:, None]).all()
        or not (keys == (np.arange(keys.shape[-1]) < lengths[:, None])).all()
    ):
        raise ValueError("only key-padding prefix masks (as Qwen2AudioModel builds) are supported")
    return lengths


def _whisper_encoder_case(module, input_features, attention_mask=None, input_features_mask=None, **kwargs):
    import torch

    config, params = whisper_encoder_from_torch(module)
    name = type(module).__name__
    with torch.no_grad():
        if name == "AudioFlamingo3Encoder":
            ref = module(input_features, input_features_mask=input_features_mask, **kwargs).last_hidden_state
        else:
            ref = module(input_features, attention_mask=attention_mask, **kwargs).last_hidden_state
    feats = input_features.detach().numpy()
    if name == "Qwen2AudioEncoder" and attention_mask is not None:
        whisper_encoder.check_inputs(config, feats, None, feats.dtype)
        lengths = jnp.asarray(_key_lengths_from_4d(attention_mask.numpy()))
        ours = whisper_encoder.forward(params, config, jnp.asarray(feats), lengths)
    else:
        mask = None if input_features_mask is None else input_features_mask.numpy()
        ours, _ = whisper_encoder.encode(params, config, feats, mask)
    return ref.float().numpy(), np.asarray(ours, np.float32)


def _aut_case(module, input_features, feature_lens, **kwargs):
    """Arguments as Qwen3OmniMoeAudioEncoder.forward takes them: (mel, sum T) audios end to end, lengths."""
    import torch

    config, params = aut_from_torch(module)
    with torch.no_grad():
        ref = module(input_features, feature_lens, **kwargs).last_hidden_state
    flat, lens = input_features.detach().numpy(), feature_lens.numpy().astype(np.int64)
    if flat.ndim != 2 or lens.sum() != flat.shape[1]:
        raise ValueError(f"input_features {flat.shape} must be (mel, sum of feature_lens = {lens.sum()})")
    feats = np.zeros((len(lens), flat.shape[0], max(lens.max(), 1)), flat.dtype)
    for i, (start, n) in enumerate(zip(np.cumsum(lens) - lens, lens, strict=True)):
        feats[i, :, :n] = flat[:, start : start + n]
    return ref.float().numpy(), aut_encoder.pack(*aut_encoder.encode(params, config, feats, lens))


def _vision_case(module, hidden_states, grid_thw, **kwargs):
    """Qwen3OmniMoeVisionEncoder(pixel_values, grid_thw): the merged tokens, then every deepstack output,
    stacked along the rows."""
    import torch

    config, params = vision_from_torch(module)
    with torch.no_grad():
        ref = module(hidden_states, grid_thw, **kwargs)
    out = vision_encoder.encode(params, config, hidden_states.float().numpy(), grid_thw.numpy())
    ours = [out.embeds] + ([] if out.deepstack is None else list(out.deepstack))
    reference = [ref.pooler_output, *ref.deepstack_features]
    return (
        np.concatenate([r.float().numpy() for r in reference]),
        np.concatenate([np.asarray(o)[: out.tokens] for o in ours]),
    )


def _code2wav_case(module: Any, codes: Any) -> tuple[np.ndarray, np.ndarray]:
    import torch

    config, params = code2wav_from_torch(module)
    with torch.no_grad():
        reference = module(codes).float().numpy()[:, 0]
    return reference, np.asarray(code2wav.code2wav(params, config, codes.numpy()))


def _positions(position_ids) -> jax.Array | None:
    """transformers' position ids -> ours (b t, or 3 b t; its 4-row form has text positions first)."""
    if position_ids is None:
        return None
    positions = jnp.asarray(position_ids.numpy(), jnp.float32)
    return positions[1:] if positions.ndim == 3 and positions.shape[0] == 4 else positions


def _start(attention_mask, shape) -> jax.Array | None:
    return None if attention_mask is None else jnp.asarray(left_pad_start(attention_mask.numpy(), shape))


def _causal_lm_case(module, input_ids, attention_mask=None, position_ids=None):
    import torch

    config, params = decoder_from_torch(module)
    with torch.no_grad():
        ref = module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    ids = jnp.asarray(input_ids.numpy())
    out, _ = decoder.forward(
        params, config, ids, positions=_positions(position_ids), start=_start(attention_mask, ids.shape)
    )
    return masked_rows(ref.numpy(), np.asarray(out.logits), attention_mask)


def _text_model_case(module, input_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None):
    """Qwen3OmniMoeThinkerTextModel: last_hidden_state, with 3-row positions."""
    import torch

    config, params = decoder_from_torch(module, lm_head=False)
    with torch.no_grad():
        ref = module(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
        ).last_hidden_state
    inputs = jnp.asarray((input_ids if inputs_embeds is None else inputs_embeds).numpy())
    out, _ = decoder.forward(
        params, config, inputs, positions=_positions(position_ids),
        start=_start(attention_mask, inputs.shape[:2]), logits="none",
    )  # fmt: skip
    return masked_rows(ref.numpy(), np.asarray(out.hidden), attention_mask)


def _causal_lm_generate_case(module, input_ids, attention_mask, max_new_tokens):
    """Greedy tokens (b n) of transformers' generate and of omni_jax.inference.loop.generate."""
    config, params = decoder_from_torch(module)
    eos, pad = stop_ids(module.generation_config)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    ref = reference_generate(module, inputs, max_new_tokens, eos, pad)
    ours = generate(
        params, config, input_ids.numpy(), attention_mask=attention_mask.numpy(),
        max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=pad,
    )  # fmt: skip
    return ref, trim_to(ref, ours, pad)


CAUSAL_LMS = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
WHISPER_ENCODERS = ("WhisperEncoder", "Qwen2AudioEncoder", "AudioFlamingo3Encoder")

TABLE = ParityTable(
    cases={
        **{name: ParityCase(_whisper_encoder_case) for name in WHISPER_ENCODERS},
        "Qwen3OmniMoeAudioEncoder": ParityCase(_aut_case),
        "Qwen3OmniMoeCode2Wav": ParityCase(_code2wav_case),
        "Qwen3OmniMoeVisionEncoder": ParityCase(_vision_case),
        **{name: ParityCase(_causal_lm_case, LOGITS_ATOL) for name in CAUSAL_LMS},
        "Qwen3OmniMoeThinkerTextModel": ParityCase(_text_model_case, MODULE_ATOL),
    },
    generate={name: _causal_lm_generate_case for name in CAUSAL_LMS},
    from_torch={
        **{name: whisper_encoder_from_torch for name in WHISPER_ENCODERS},
        "Qwen3OmniMoeAudioEncoder": aut_from_torch,
        "Qwen3OmniMoeCode2Wav": code2wav_from_torch,
        "Qwen3OmniMoeVisionEncoder": vision_from_torch,
        **{name: decoder_from_torch for name in (*CAUSAL_LMS, "Qwen3OmniMoeThinkerTextModel")},
    },
)
