"""The RoPE decoder family against transformers: Qwen2, Qwen3, Qwen3-MoE (mixed dense/MoE, both
dispatch paths), the Qwen3-Omni Thinker text model (interleaved MRoPE, deepstack) and the Talker body
(shared expert)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_fixtures import assert_talker_matches, mrope_positions, prompts, talker, tiny

from omni_jax import parity
from omni_jax.convert.keymap import params_to_hf
from omni_jax.models import decoder
from omni_jax.nn.rope import mrope_axes

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


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
    config, params = parity.from_torch(model, moe_impl=impl)
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
    config, params = parity.from_torch(model, lm_head=False)
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
    config, params = parity.from_torch(model, lm_head=False)
    out, _ = decoder.forward(
        params, config, jnp.asarray(ids.numpy()), layer_inputs=jnp.asarray(dense), logits="none"
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
    config, params = parity.from_torch(model)
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
