"""Torch-side fixtures shared by the tests: tiny random transformers decoders and prompts, the tiny encoder
shape, the Talker check, and a compilation counter."""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from omni_jax.convert.keymap import hf_to_params
from omni_jax.models import decoder
from omni_jax.parity.reference import randomize

# the shape both tiny encoder test configs share (AuT and the Whisper-style encoders)
TINY_ENCODER = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64)

# decoder weights a little larger than the encoders', so every path of the tiny decoders matters
randomize_decoder = functools.partial(randomize, scale=0.15)

COMMON = dict(
    vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2
)
MOE = dict(
    moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1]
)
ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [6, 5, 5], "interleaved": True}


def tiny(kind: str):
    """A tiny random transformers model: qwen2 | qwen3 | qwen3_moe | thinker | talker."""
    torch.manual_seed(0)
    if kind == "qwen2":
        return randomize_decoder(
            transformers.Qwen2ForCausalLM(transformers.Qwen2Config(intermediate_size=96, **COMMON))
        )
    if kind == "qwen3":
        cfg = transformers.Qwen3Config(intermediate_size=96, head_dim=32, tie_word_embeddings=True, **COMMON)
        return randomize_decoder(transformers.Qwen3ForCausalLM(cfg))
    if kind == "qwen3_moe":
        cfg = transformers.Qwen3MoeConfig(intermediate_size=96, head_dim=32, **MOE, **COMMON)
        return randomize_decoder(transformers.Qwen3MoeForCausalLM(cfg))
    from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as omni
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as omni_model

    if kind == "thinker":
        cfg = omni.Qwen3OmniMoeTextConfig(
            intermediate_size=96, head_dim=32, rope_parameters=ROPE, **MOE, **COMMON
        )
        return randomize_decoder(omni_model.Qwen3OmniMoeThinkerTextModel(cfg))
    cfg = omni.Qwen3OmniMoeTalkerTextConfig(
        intermediate_size=96,
        head_dim=32,
        rope_parameters=ROPE,
        shared_expert_intermediate_size=48,
        **MOE,
        **COMMON,
    )
    return randomize_decoder(omni_model.Qwen3OmniMoeTalkerModel(cfg))


def prompts(batch=3, t=12, seed=0):
    """Token ids and a left-padding mask with different prompt lengths."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, t, dtype=torch.long)
    for b in range(1, batch):
        mask[b, : 3 * b] = 0
    return torch.randint(1, 128, (batch, t), generator=g) * mask, mask


def mrope_positions(batch=3, t=12):
    """(3, b, t) float positions with distinct T/H/W rows in the middle (an 'image') and a negative delta."""
    pos = np.tile(np.arange(t, dtype=np.float32), (3, batch, 1))
    pos[1, :, 4:8] = [4, 4, 5, 5]
    pos[2, :, 4:8] = [4, 5, 4, 5]
    pos[0, :, 4:8] = 4
    pos[:, :, 8:] -= 2
    return torch.tensor(pos)


def talker():
    """The tiny Talker model, its decoder config and params (its codec embedding is not a decoder weight)."""
    model = tiny("talker")
    config = decoder.Config.from_hf(model.config)
    state = {f"model.{k}": v for k, v in model.state_dict().items() if not k.startswith("codec_embedding")}
    return model, config, hf_to_params(state, decoder.hf_rules(config), decoder.param_specs(config))


def assert_talker_matches(model, config, params):
    """Hidden states on embeddings with MRoPE positions equal the transformers Talker's (1e-4)."""
    embeds = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(5))
    pos = mrope_positions(2, 9)
    with torch.no_grad():
        ref = model(inputs_embeds=embeds, position_ids=pos).last_hidden_state
    out, _ = decoder.forward(
        params, config, jnp.asarray(embeds.numpy()), positions=jnp.asarray(pos.numpy()), logits="none"
    )
    np.testing.assert_allclose(np.asarray(out.hidden), ref.numpy(), atol=1e-4)


@contextlib.contextmanager
def count_compilations():
    """Yields a list that receives one entry per XLA compilation inside the block: a backend compile, or
    its executable read from the persistent compilation cache (tests/conftest.py turns it on)."""
    events: list[str] = []

    def on_duration(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    def on_event(event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
