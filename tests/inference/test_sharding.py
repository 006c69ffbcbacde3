"""Sharding: prefill, decode and generate on (8 data), (2 data x 4 tensor) and (2 data x 4 expert) meshes give
the single-device result with the declared output shardings; colliding rules are rejected."""

import numpy as np
import pytest
from torch_fixtures import tiny

from omni_jax import parity, sharding
from omni_jax.inference import engine
from omni_jax.inference.loop import generate
from omni_jax.models import decoder
from omni_jax.nn.cache import CACHE_AXES, init_cache
from omni_jax.nn.params import logical_axes

torch = pytest.importorskip("torch")

MESHES = {
    "data8": dict(data=8),
    "data2_tensor4": dict(data=2, tensor=4),
    "data2_expert4": dict(data=2, expert=4),
}


@pytest.fixture(scope="module")
def setup():
    config, params = parity.from_torch(tiny("qwen3_moe"))
    rng = np.random.default_rng(0)
    mask = (np.arange(16)[None] >= 2 * np.arange(8)[:, None]).astype(np.int32)
    ids = rng.integers(1, 128, (8, 16)) * mask
    want = run(params, config, ids, mask)
    want_tokens = np.asarray(generate(params, config, ids, attention_mask=mask, max_new_tokens=4))
    return config, params, ids, mask, want, want_tokens


def run(params, config, ids, mask):
    step = engine.prefill(params, config, ids, init_cache(config, 8, 24), attention_mask=mask)
    logits = [step.logits]
    for token in (5, 9):
        step = engine.decode_step(params, config, np.full(8, token), step.cache)
        logits.append(step.logits)
    return logits, step.cache


@pytest.mark.parametrize("name", list(MESHES))
def test_meshes_match_single_device(setup, name):
    config, params, ids, mask, (want, _), want_tokens = setup
    mesh = sharding.make_mesh(**MESHES[name])
    sharded = sharding.shard_params(
        params, mesh, sharding.RULES, axes=logical_axes(decoder.param_specs(config))
    )
    if name == "data2_expert4":
        assert sharded["moe"]["experts"]["gate_up"].sharding.spec[1] == "expert"
    if name == "data2_tensor4":
        assert sharded["layers"]["attn"]["q"]["kernel"].sharding.spec[2] == "tensor"
    with sharding.use_mesh(mesh):
        got, cache = run(sharded, config, ids, mask)
        tokens = np.asarray(generate(sharded, config, ids, attention_mask=mask, max_new_tokens=4))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)
        assert g.sharding.is_equivalent_to(sharding.named_sharding(mesh, ("batch", "act_vocab"), g.shape), 2)
    assert cache.k.sharding.is_equivalent_to(sharding.named_sharding(mesh, CACHE_AXES, cache.k.shape), 5)
    np.testing.assert_array_equal(tokens, want_tokens)


def test_rules_reject_collisions(setup):
    config, params = setup[:2]
    mesh = sharding.make_mesh(tensor=4)
    rules = tuple((n, ("tensor",) if n == "embed" else axes) for n, axes in sharding.RULES)
    with pytest.raises(ValueError, match="collision"):
        sharding.shard_params(params, mesh, rules, axes=logical_axes(decoder.param_specs(config)))
    with pytest.raises(ValueError, match="duplicate"):
        sharding.check_rules((("batch", ("data",)), ("batch", ("fsdp",))))
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh(data=16)
