"""Qwen3-Omni vision encoder against transformers' Qwen3OmniMoeVisionEncoder (spec 2.5.1's tiny config,
float32, CPU): the merged tokens and every deepstack output."""

import numpy as np
import pytest
import torch
from torch_fixtures import count_compilations
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeVisionEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeVisionEncoder

from omni_jax import parity
from omni_jax.convert.keymap import params_to_hf
from omni_jax.models import vision_encoder as ve
from omni_jax.parity.reference import randomize

TINY = dict(
    depth=4, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4, temporal_patch_size=2,
    spatial_merge_size=2, out_hidden_size=48, num_position_embeddings=16, deepstack_visual_indexes=[1, 3],
)  # fmt: skip


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return randomize(Qwen3OmniMoeVisionEncoder(Qwen3OmniMoeVisionEncoderConfig(**TINY)), scale=0.2)


@pytest.fixture(scope="module")
def converted(module):
    return parity.from_torch(module)


def patches(grid, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(int(np.prod(grid, 1).sum()), 96, generator=g), torch.tensor(grid)


GRIDS = {
    "one image": [[1, 4, 6]],
    "images of different sizes": [[1, 4, 6], [1, 12, 16], [1, 2, 2], [1, 8, 2]],
    "a video (3 frame groups, several attention blocks)": [[3, 8, 16]],
    "an image and a video": [[1, 6, 4], [4, 8, 12]],
    "frame groups in query chunks past the last row": [[7, 12, 14]],
}


@pytest.mark.parametrize("case", GRIDS)
def test_parity(module, case):
    """Merged tokens and both deepstack outputs (stacked) within 1e-4 of transformers."""
    report = parity.compare(module, *patches(GRIDS[case]))
    assert report.ok, str(report)


def test_tables_and_block_structure(converted):
    """Segments: one per (item, t), each from a block boundary, so a query block reads only its own segment's
    key blocks; padding rows are segment -1 and the merged tokens are compacted."""
    config, _ = converted
    tables, layout = ve.grid_tables(config, [[1, 4, 6], [3, 8, 16]])  # 24 + 3 x 128 patches
    assert layout == ve.Layout(patches=448, block=64, key_blocks=2)
    segments = tables.segments
    assert [np.flatnonzero(segments == s)[[0, -1]].tolist() for s in range(4)] == [
        [0, 23], [64, 191], [192, 319], [320, 447]
    ]  # fmt: skip
    assert tables.key_block_start.tolist() == [0, 1, 1, 3, 3, 5, 5]
    assert tables.token_rows[:8].tolist() == [0, 1, 2, 3, 4, 5, 16, 17]
    tables, layout = ve.grid_tables(config, [[1, 8, 8], [6, 8, 8], [2, 8, 24]])  # segments of 64, 64 .. 192
    assert layout == ve.Layout(patches=832, block=64, key_blocks=3)
    assert tables.key_block_start.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 10, 10, 10]
    tables, layout = ve.grid_tables(config, [[7, 12, 14]])  # 7 x 11 blocks of 16, bucketed to 78
    assert layout == ve.Layout(patches=1248, block=16, key_blocks=11, query_blocks=11)
    assert tables.key_block_start.tolist() == [0, 11, 22, 33, 44, 55, 66, 67]  # a chunk per group, padding
    assert [ve.bucket_patches(n) for n in (1, 60, 64, 100)] == [16, 64, 64, 128]
    assert [ve.bucket_blocks(n) for n in (7, 33, 49, 65, 101, 200)] == [7, 33, 49, 66, 102, 200]


@pytest.mark.parametrize("grid", [[[1, 28, 28]], [[1, 28, 28]] * 4, [[8, 28, 28]], [[2, 20, 36]] * 3])
def test_attention_flops_near_per_segment(converted, grid):
    """Segments of one size: the block structure computes at most 1.2x the logits of per-segment attention
    (transformers'). (Mixed sizes read the key span of the largest.)"""
    config, _ = converted
    _, layout = ve.grid_tables(config, grid)
    rows = layout.block * layout.query_blocks
    ours = -(-layout.patches // rows) * rows * layout.key_blocks * layout.block
    assert ours <= 1.2 * sum(t * (h * w) ** 2 for t, h, w in grid)


def test_compiles_once_per_bucket(converted):
    config, params = converted
    ve.encode(params, config, np.zeros((64, 96), np.float32), [[1, 8, 8]])
    with count_compilations() as compiled:
        out = ve.encode(params, config, np.ones((60, 96), np.float32), [[1, 6, 10]])
        ve.encode(params, config, np.ones((64, 96), np.float32), [[1, 4, 4], [1, 4, 12]])
    assert compiled == [] and out.tokens == 15 and out.embeds.shape == (16, 48)


def test_key_map_round_trip(module, converted):
    config, params = converted
    state = params_to_hf(params, ve.hf_rules(config), ve.param_specs(config))
    ref = module.state_dict()
    assert sorted(state) == sorted(ref)
    for key, value in state.items():
        np.testing.assert_array_equal(value, ref[key].numpy(), err_msg=key)


def test_bad_inputs(converted):
    config, params = converted
    with pytest.raises(ValueError, match="multiples of spatial_merge_size 2"):
        ve.encode(params, config, np.zeros((15, 96), np.float32), [[1, 3, 5]])
    with pytest.raises(ValueError, match="gives 16 patches, pixels have 12"):
        ve.encode(params, config, np.zeros((12, 96), np.float32), [[1, 4, 4]])
    with pytest.raises(ValueError, match=r"pixel values must be \(patches, 96\)"):
        ve.encode(params, config, np.zeros((16, 95), np.float32), [[1, 4, 4]])
    with pytest.raises(ValueError, match="must be positive"):
        ve.encode(params, config, np.zeros((0, 96), np.float32), [[1, 0, 4]])


def test_sharded_params_give_the_same_features(converted):
    """Parameters laid out by their logical axes on a (fsdp 2 x tensor 2) mesh: the same outputs."""
    from omni_jax import sharding
    from omni_jax.nn.params import logical_axes

    config, params = converted
    pixels, grid = (t.numpy() for t in patches([[1, 4, 6], [2, 4, 4]]))
    want = ve.encode(params, config, pixels, grid)
    mesh = sharding.make_mesh(fsdp=2, tensor=2)
    sharded = sharding.shard_params(params, mesh, axes=logical_axes(ve.param_specs(config)))
    assert len(sharded["blocks"]["fc1"]["kernel"].sharding.device_set) == 4
    got = ve.encode(sharded, config, pixels, grid)
    np.testing.assert_allclose(np.asarray(got.embeds), np.asarray(want.embeds), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.deepstack), np.asarray(want.deepstack), atol=1e-5)
