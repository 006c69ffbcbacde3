"""Sampling against transformers' logits processors, and seeded reproducibility."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.inference.sampling import GREEDY, Sampling, first_argmax, process_logits, sample

torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")


def _logits(seed=0, shape=(4, 50)):
    return np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32)


def _seen(ids, vocab=50):
    seen = np.zeros((len(ids), vocab), bool)
    for row, tokens in enumerate(ids):
        seen[row, tokens] = True
    return seen


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(repetition_penalty=1.3),
        Sampling(suppress_tokens=(3, 17)),
        Sampling(temperature=0.7, top_k=5),
        Sampling(temperature=1.3, top_p=0.8),
        Sampling(temperature=0.9, top_k=10, top_p=0.5, repetition_penalty=0.8, suppress_tokens=(0,)),
    ],
)
def test_processors_match_transformers(sampling):
    logits, ids = _logits(), np.random.default_rng(1).integers(0, 50, (4, 7))
    procs = []
    if sampling.repetition_penalty != 1:
        procs.append(lp.RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    if sampling.suppress_tokens:
        procs.append(lp.SuppressTokensLogitsProcessor(list(sampling.suppress_tokens)))
    if not sampling.greedy:
        procs.append(lp.TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k:
            procs.append(lp.TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1:
            procs.append(lp.TopPLogitsWarper(sampling.top_p))
    ref = torch.from_numpy(logits)
    for p in procs:
        ref = p(torch.from_numpy(ids), ref)
    ours = np.asarray(process_logits(jnp.asarray(logits), sampling, jnp.asarray(_seen(ids))))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref.numpy()))
    finite = ~np.isinf(ours)
    np.testing.assert_allclose(ours[finite], ref.numpy()[finite], rtol=1e-6)


def test_greedy_is_argmax_and_sampling_is_seeded():
    logits = jnp.asarray(_logits())
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(sample(logits, GREEDY, key), np.argmax(np.asarray(logits), -1))
    np.testing.assert_array_equal(
        sample(logits, Sampling(temperature=1.0, top_k=1), key), np.argmax(logits, -1)
    )
    hot = Sampling(temperature=5.0)
    draws = np.stack([np.asarray(sample(logits, hot, jax.random.PRNGKey(s))) for s in range(8)])
    np.testing.assert_array_equal(draws[0], np.asarray(sample(logits, hot, jax.random.PRNGKey(0))))
    assert len({tuple(d) for d in draws}) > 1
    top = Sampling(temperature=1.0, top_k=3)
    allowed = np.argsort(-np.asarray(logits), -1)[:, :3]
    for s in range(8):
        chosen = np.asarray(sample(logits, top, jax.random.PRNGKey(s)))
        assert all(c in a for c, a in zip(chosen, allowed, strict=True))


def test_first_argmax_equals_argmax_with_ties_infs_and_nans():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 300)).astype(np.float32)
    logits[1, :] = 7.0  # all tied
    logits[2, [3, 9]] = np.inf
    logits[3, [5, 50]] = np.nan
    logits[4, :] = -np.inf
    logits[5, [10, 20]] = logits[5].max() + 1  # tie at the maximum
    ours = np.asarray(first_argmax(jnp.asarray(logits)))
    np.testing.assert_array_equal(ours, np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)))
    np.testing.assert_array_equal(ours, torch.from_numpy(logits).argmax(-1).numpy())


def test_invalid_settings():
    with pytest.raises(ValueError, match="top_p"):
        Sampling(temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=-1.0)
