"""The RoPE decoder family against transformers: Qwen2, Qwen3, Qwen3-MoE (mixed dense/MoE, both
dispatch paths), the Qwen3-Omni Thinker text model (interleaved MRoPE, deepstack) and the Talker body
(shared expert)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax import parity
from omni_jax.convert.keymap import params_to_hf
from omni_jax.models import decoder
from omni_jax.nn.rope import mrope_axes

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

COMMON = dict(
    vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2
)
MOE = dict(
    moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1]
)
ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [6, 5, 5], "interleaved": True}


def randomize(module, seed: int = 1234):
    """Weights large enough that every path matters (default init is too flat); norms around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = 0.1 * torch.randn(p.shape, generator=g)
            p.copy_(1 + noise if "norm" in name else 1.5 * noise)
    return module.eval()


def tiny(kind: str):
    """A tiny random transformers model: qwen2 | qwen3 | qwen3_moe | thinker | talker."""
    torch.manual_seed(0)
    if kind == "qwen2":
        return randomize(
            transformers.Qwen2ForCausalLM(transformers.Qwen2Config(intermediate_size=96, **COMMON))
        )
    if kind == "qwen3":
        cfg = transformers.Qwen3Config(intermediate_size=96, head_dim=32, tie_word_embeddings=True, **COMMON)
        return randomize(transformers.Qwen3ForCausalLM(cfg))
    if kind == "qwen3_moe":
        cfg = transformers.Qwen3MoeConfig(intermediate_size=96, head_dim=32, **MOE, **COMMON)
        return randomize(transformers.Qwen3MoeForCausalLM(cfg))
    from transformers.models.qwen3_omni_moe import configuration_qwen3_omni_moe as omni
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as omni_model

    if kind == "thinker":
        cfg = omni.Qwen3OmniMoeTextConfig(
            intermediate_size=96, head_dim=32, rope_parameters=ROPE, **MOE, **COMMON
        )
        return randomize(omni_model.Qwen3OmniMoeThinkerTextModel(cfg))
    cfg = omni.Qwen3OmniMoeTalkerTextConfig(
        intermediate_size=96,
        head_dim=32,
        rope_parameters=ROPE,
        shared_expert_intermediate_size=48,
        **MOE,
        **COMMON,
    )
    return randomize(omni_model.Qwen3OmniMoeTalkerModel(cfg))


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


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "qwen3_moe"])
def test_causal_lm_logits(kind):
    model = tiny(kind)
    ids, mask = prompts()
    assert parity.compare(model, ids).ok
    rep = parity.compare(model, ids, attention_mask=mask)
    assert rep.ok and rep.max_abs_diff <= parity.LOGITS_ATOL, rep


@pytest.mark.parametrize("impl", ["dense", "ragged"])
def test_moe_hidden_states_both_dispatch_paths(impl):
    model = tiny("qwen3_moe")
    ids, _ = prompts()
    config, params = decoder.from_torch(model, moe_impl=impl)
    assert config.sparse_layers == (True, False, True)
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True)
    out, _ = decoder.forward(params, config, jnp.asarray(ids.numpy()), hidden_layers=(0, 1, 2, 3))
    for i, h in out.hidden_states.items():
        np.testing.assert_allclose(
            np.asarray(h), ref.hidden_states[i].numpy(), atol=1e-4, err_msg=f"hidden {i}"
        )
    np.testing.assert_allclose(np.asarray(out.logits), ref.logits.numpy(), atol=1e-3)


def test_thinker_text_mrope_and_padding():
    model = tiny("thinker")
    ids, mask = prompts()
    pos = mrope_positions()
    rep = parity.compare(model, input_ids=ids, position_ids=pos, attention_mask=mask)
    assert rep.ok, rep
    # the 3 rows matter: a 1-D run of the same rows differs
    config, params = decoder.from_torch(model, lm_head=False)
    out, _ = decoder.forward(
        params, config, jnp.asarray(ids.numpy()), positions=jnp.asarray(pos.numpy()[0]), logits="none"
    )
    ref = model(input_ids=ids, position_ids=pos).last_hidden_state.detach().numpy()
    assert np.abs(np.asarray(out.hidden) - ref).max() > 1e-2


def test_thinker_deepstack_inputs():
    model = tiny("thinker")
    ids, _ = prompts(batch=2)
    visual = torch.zeros(2, 12, dtype=torch.bool)
    visual[0, 4:8] = visual[1, 2:5] = True
    g = torch.Generator().manual_seed(3)
    deep = [torch.randn(int(visual.sum()), 64, generator=g) for _ in range(2)]
    with torch.no_grad():
        ref = model(input_ids=ids, visual_pos_masks=visual, deepstack_visual_embeds=deep).last_hidden_state
    dense = np.zeros((2, 2, 12, 64), np.float32)
    for level, feats in enumerate(deep):
        dense[level][visual.numpy()] = feats.numpy()
    config, params = decoder.from_torch(model, lm_head=False)
    out, _ = decoder.forward(
        params, config, jnp.asarray(ids.numpy()), layer_inputs=jnp.asarray(dense), logits="none"
    )
    np.testing.assert_allclose(np.asarray(out.hidden), ref.numpy(), atol=1e-4)


def talker():
    """The tiny Talker model, its decoder config and params (its codec embedding is not a decoder weight)."""
    model = tiny("talker")
    config = decoder.Config.from_hf(model.config)
    state = {f"model.{k}": v for k, v in model.state_dict().items() if not k.startswith("codec_embedding")}
    return model, config, decoder.hf_state_to_params(state, config)


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


def test_talker_shared_expert_body():
    model, config, params = talker()
    assert config.sparse_layers == (True,) * 3 and not config.embed and not config.lm_head
    assert_talker_matches(model, config, params)


def test_mrope_axes_interleaved():
    axes = mrope_axes(16, (6, 5, 5))
    assert [j for j in range(16) if axes[j] == 0] == [0, 3, 6, 9, 12, 15]
    assert [j for j in range(16) if axes[j] == 1] == [1, 4, 7, 10, 13]
    assert [j for j in range(16) if axes[j] == 2] == [2, 5, 8, 11, 14]


def test_rules_round_trip_and_specs():
    model = tiny("qwen2")
    config, params = decoder.from_torch(model)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    back = params_to_hf(params, decoder.hf_rules(config), decoder.param_specs(config))
    assert back.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)
    shapes = jax.tree.map(
        lambda s: s.shape, decoder.param_specs(config), is_leaf=lambda s: hasattr(s, "axes")
    )
    assert jax.tree.map(np.shape, params) == shapes


def test_config_errors():
    with pytest.raises(ValueError, match="sliding-window"):
        decoder.Config.from_hf(
            transformers.Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=0)
        )
    with pytest.raises(ValueError, match="unsupported decoder model_type"):
        decoder.Config.from_hf({"model_type": "llama"})
    config = decoder.Config.from_hf(tiny("qwen2").config)
    with pytest.raises(ValueError, match="num_kv_heads"):
        dataclasses.replace(config, num_kv_heads=3)
    with pytest.raises(ValueError, match="3-row positions"):
        decoder.rope_tables(config, jnp.zeros((3, 1, 4)), jnp.float32)
