"""Engine and generation: prefill + decode equal one full forward; greedy tokens identical to transformers'
generate (batch 3, left padding, EOS); streaming equals the on-device loop; cache overflow is caught early."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from torch_fixtures import mrope_positions, prompts, tiny

from omni_jax import parity
from omni_jax.inference import engine
from omni_jax.inference.loop import generate, stream
from omni_jax.models import decoder
from omni_jax.nn.cache import init_cache

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("kind", ["qwen2", "qwen3_moe"])
def test_greedy_tokens_match_transformers(kind):
    model = tiny(kind)
    ids, mask = prompts()
    rep = parity.compare_generate(model, ids, mask, max_new_tokens=32)
    assert rep.ok and rep.reference.shape == (3, 32), rep
    if kind != "qwen2":
        return
    # with EOS: a row stops at its first EOS and is padded afterwards, as in transformers
    model.generation_config.eos_token_id = [int(rep.reference[0, 3]), int(rep.reference[2, 5])]
    model.generation_config.pad_token_id = 0
    rep = parity.compare_generate(model, ids, mask, max_new_tokens=32)
    assert rep.ok, rep


def test_prefill_decode_equals_forward_mrope():
    """Thinker-style: 3-row positions with a negative delta carried into decode, left padding, deepstack."""
    model = tiny("thinker")
    config, params = parity.from_torch(model, lm_head=False)  # the bare text model ends at the final norm
    ids, mask = prompts()
    pos = mrope_positions().numpy()
    new = np.random.default_rng(0).integers(1, 128, (3, 5))
    # full forward over prompt + 5 tokens; decode positions continue from the last prompt position + 1
    full_pos = np.concatenate([pos, pos[:, :, -1:] + np.arange(1, 6, dtype=np.float32)], axis=2)
    full = np.concatenate([ids.numpy(), new], 1)
    start = jnp.asarray(12 - mask.numpy().sum(1), jnp.int32)
    deep = np.random.default_rng(1).normal(size=(2, 3, 17, 64)).astype(np.float32)
    deep[:, :, 12:] = 0
    ref, _ = decoder.forward(
        params, config, jnp.asarray(full), positions=jnp.asarray(full_pos), start=start,
        layer_inputs=jnp.asarray(deep), hidden_layers=(0, 2, 3), logits="none",
    )  # fmt: skip
    cache = init_cache(config, 3, 32)
    with pytest.raises(ValueError, match="no lm_head"):
        engine.prefill(params, config, ids.numpy(), cache, attention_mask=mask.numpy())
    config = dataclasses.replace(config, lm_head=True, tie_word_embeddings=True)  # logits from the embedding
    step = engine.prefill(
        params, config, ids.numpy(), cache, attention_mask=mask.numpy(), positions=pos,
        layer_inputs=deep[:, :, :12], hidden_layers=(0, 2, 3),
    )  # fmt: skip
    hidden = {i: [h] for i, h in step.hidden_states.items()}
    for s in range(5):
        step = engine.decode_step(params, config, new[:, s], step.cache, hidden_layers=(0, 2, 3))
        for i, h in step.hidden_states.items():
            hidden[i].append(h)
    valid = mask.numpy().astype(bool)
    for i, parts in hidden.items():
        got = np.concatenate([np.asarray(p) for p in parts], 1)
        want = np.asarray(ref.hidden_states[i])
        np.testing.assert_allclose(got[:, :12][valid], want[:, :12][valid], atol=1e-4, err_msg=f"prompt {i}")
        np.testing.assert_allclose(got[:, 12:], want[:, 12:], atol=1e-4, err_msg=f"decode {i}")
    logits_ref = np.asarray(decoder.unembed(params, config, ref.hidden_states[3][:, -1]))
    np.testing.assert_allclose(np.asarray(step.logits), logits_ref, atol=1e-4)


def test_prefill_decode_equals_forward_logits():
    model = tiny("qwen3_moe")
    config, params = parity.from_torch(model)
    ids, mask = prompts()
    new = np.random.default_rng(0).integers(1, 128, (3, 6))
    full = np.concatenate([ids.numpy(), new], 1)
    ref, _ = decoder.forward(params, config, jnp.asarray(full), start=jnp.asarray(12 - mask.numpy().sum(1)))
    step = engine.prefill(params, config, ids.numpy(), init_cache(config, 3, 24), attention_mask=mask.numpy())
    logits = [step.logits]
    for s in range(5):
        step = engine.decode_step(params, config, new[:, s], step.cache)
        logits.append(step.logits)
    np.testing.assert_allclose(np.stack(logits, 1), np.asarray(ref.logits)[:, 11:17], atol=1e-4)


def test_stream_equals_generate_and_sampling_is_seeded():
    model = tiny("qwen2")
    config, params = parity.from_torch(model)
    ids, mask = prompts()
    from omni_jax.inference.sampling import Sampling

    sampling = Sampling(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2)
    kw = dict(attention_mask=mask.numpy(), max_new_tokens=12, sampling=sampling, eos_ids=(7, 9), seed=3)
    tokens = np.asarray(generate(params, config, ids.numpy(), **kw))
    streamed = np.stack(list(stream(params, config, ids.numpy(), **kw)), 1)
    np.testing.assert_array_equal(streamed, tokens[:, : streamed.shape[1]])
    assert (tokens[:, streamed.shape[1] :] == 7).all()
    np.testing.assert_array_equal(np.asarray(generate(params, config, ids.numpy(), **kw)), tokens)
    assert not np.array_equal(np.asarray(generate(params, config, ids.numpy(), **{**kw, "seed": 4})), tokens)


def test_cache_overflow_is_an_error_before_running():
    model = tiny("qwen2")
    config, params = parity.from_torch(model)
    ids, mask = prompts()
    with pytest.raises(ValueError, match="overflow"):
        generate(params, config, ids.numpy(), max_new_tokens=8, cache_length=16)
    with pytest.raises(ValueError, match="overflow"):
        next(stream(params, config, ids.numpy(), max_new_tokens=8, cache_length=16))
    with pytest.raises(ValueError, match="overflow: prompt 12"):
        engine.prefill(params, config, ids.numpy(), init_cache(config, 3, 8))
    step = engine.prefill(params, config, ids.numpy(), init_cache(config, 3, 12))  # exactly full
    with pytest.raises(ValueError, match="cache full"):
        engine.decode_step(params, config, np.ones(3, np.int32), step.cache)
    with pytest.raises(ValueError, match="left padding"):
        engine.prefill(
            params, config, ids.numpy(), init_cache(config, 3, 16), attention_mask=np.flip(mask.numpy(), 1)
        )


def test_prompt_lengths_share_a_bucket():
    assert [engine.bucket(t, 1 << 20) for t in (1, 8, 9, 16, 17, 500)] == [8, 8, 16, 16, 32, 512]
    assert engine.bucket(9, 12) == 12 and engine.bucket(12, 12) == 12


def test_repetition_penalty_sees_prompt_ids_with_embedding_inputs():
    """Multimodal callers pass embeddings plus `prompt_ids`: the penalty must see the prompt as with ids."""
    from omni_jax.inference.sampling import Sampling

    model = tiny("qwen2")
    config, params = parity.from_torch(model)
    ids, mask = prompts()
    ids, mask = ids.numpy(), mask.numpy()
    sampling = Sampling(repetition_penalty=0.05)  # < 1 favours seen tokens: the prompt then steers the output
    with_ids = generate(params, config, ids, attention_mask=mask, max_new_tokens=8, sampling=sampling)
    embeds = np.asarray(decoder.embed(params, config, jnp.asarray(ids)))
    with_embeds = generate(
        params, config, embeds, attention_mask=mask, max_new_tokens=8, sampling=sampling, prompt_ids=ids
    )
    np.testing.assert_array_equal(np.asarray(with_ids), np.asarray(with_embeds))
    blind = generate(params, config, embeds, attention_mask=mask, max_new_tokens=8, sampling=sampling)
    assert not np.array_equal(np.asarray(with_ids), np.asarray(blind))


@pytest.mark.parametrize("kind", ["qwen2", "qwen3_moe"])
def test_unstacked_layers_give_the_same_tokens(kind):
    """`decoder.unstack_layers` (unrolled layers, the CPU decode layout) changes nothing but speed."""
    config, params = parity.from_torch(tiny(kind))
    ids, mask = prompts()
    ids, mask = ids.numpy(), mask.numpy()
    stacked = generate(params, config, ids, attention_mask=mask, max_new_tokens=6)
    unrolled = generate(decoder.unstack_layers(params), config, ids, attention_mask=mask, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(stacked), np.asarray(unrolled))
    full, _ = decoder.forward(params, config, jnp.asarray(ids))
    flat, _ = decoder.forward(decoder.unstack_layers(params), config, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(full.logits), np.asarray(flat.logits), atol=1e-5)


def test_repetition_penalty_ignores_bucket_padding(monkeypatch):
    """Prompts are left-padded to a power-of-two bucket with id 0: the penalty sees only the caller's ids."""
    from omni_jax.inference import loop as gen
    from omni_jax.inference.sampling import Sampling

    config, params = parity.from_torch(tiny("qwen2"))
    ids, mask = prompts()  # 12 tokens: bucket 16
    ids, mask = np.maximum(ids.numpy(), 1), mask.numpy()
    captured = {}
    real = gen._generate

    def spy(*args, **kwargs):
        captured["seen"] = args[3]
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "_generate", spy)
    generate(
        params, config, ids, attention_mask=mask, max_new_tokens=2, sampling=Sampling(repetition_penalty=1.5)
    )
    seen = np.asarray(captured["seen"])
    assert not seen[:, 0].any()
    np.testing.assert_array_equal(seen[np.arange(3)[:, None], ids], True)


def test_right_padding_is_rejected_and_embedding_dtype_follows_params():
    config, params = parity.from_torch(tiny("qwen2"))
    ids, mask = prompts()
    right = np.flip(mask.numpy(), axis=1).copy()
    with pytest.raises(ValueError, match="left padding"):
        parity.compare(tiny("qwen2"), ids, attention_mask=torch.from_numpy(right))
    embeds = decoder.embed(params, config, jnp.asarray(ids.numpy())).astype(jnp.bfloat16)
    out, _ = decoder.forward(params, config, embeds)
    assert out.logits.dtype == jnp.float32
