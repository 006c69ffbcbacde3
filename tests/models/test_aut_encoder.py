"""Qwen3-Omni AuT encoder against transformers' Qwen3OmniMoeAudioEncoder (tiny config, float32, CPU)."""

import numpy as np
import pytest
import torch
from torch_fixtures import TINY_ENCODER, count_compilations
from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
    Qwen3OmniMoeAudioEncoder,
    _get_feat_extract_output_lengths,
)

from omni_jax import parity
from omni_jax.convert.keymap import params_to_hf
from omni_jax.models import aut_encoder as aut
from omni_jax.parity.reference import randomize

MEL = 16
# spec part C: 2 layers, conv chunks of 100 frames (13 tokens), attention windows of 2 chunks (26 tokens)
TINY = dict(
    num_mel_bins=MEL,
    **TINY_ENCODER,
    downsample_hidden_size=8,
    output_dim=64,
    n_window=50,
    n_window_infer=200,
    conv_chunksize=2,
)
WINDOW_FRAMES = 200


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return randomize(Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**TINY)))


@pytest.fixture(scope="module")
def converted(module):
    return parity.from_torch(module)


def audios(lengths, seed=7):
    """Concatenated features (mel, sum T) as transformers' encoder takes them, and the lengths."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(MEL, sum(lengths), generator=g), torch.tensor(lengths)


def test_token_count_matches_transformers():
    frames = np.arange(0, 6001)
    ref = _get_feat_extract_output_lengths(torch.from_numpy(frames)).numpy()
    np.testing.assert_array_equal(aut.audio_token_count(frames), ref)
    table = {1: 1, 4: 1, 50: 7, 99: 13, 100: 13, 101: 14, 130: 17, 199: 26, 200: 26, 330: 43, 3000: 390}
    assert {t: int(aut.audio_token_count(t)) for t in table} == table


# 1, 99, 100, 101 frames; exactly one window (200); one window + 1; several windows (650 = 3 windows + 50)
@pytest.mark.parametrize("length", [1, 99, 100, 101, WINDOW_FRAMES, WINDOW_FRAMES + 1, 650])
def test_single_audio_parity(module, length):
    report = parity.compare(module, *audios([length]))
    assert report.ok, report


# mixed batches; the first two make transformers pad chunks to < 100 frames (pitfall A.8.1)
@pytest.mark.parametrize("lengths", [[1, 60, 99], [60, 30], [330, 130], [650, 1, 201, 100, 60]])
def test_batch_parity(module, lengths):
    report = parity.compare(module, *audios(lengths))
    assert report.ok, report


def test_chunk_padding_depends_on_the_batch(converted):
    """A 60-frame audio encodes differently next to a 130-frame one (its chunk is zero-padded to 100, not 60
    frames); parity on both batches above shows we reproduce it, this shows the difference is real."""
    config, params = converted
    feats = np.asarray(audios([130])[0])[None]
    alone = aut.pack(*aut.encode(params, config, feats[:, :, :60], np.array([60])))
    both = aut.pack(*aut.encode(params, config, np.concatenate([feats, feats]), np.array([60, 130])))
    assert np.abs(alone - both[: len(alone)]).max() > 1e-3


def perturb_window(feats: np.ndarray, k: int) -> np.ndarray:
    out = feats.copy()
    out[..., k * WINDOW_FRAMES : (k + 1) * WINDOW_FRAMES] += 1.0
    return out


def window_change(before: np.ndarray, after: np.ndarray, k: int, window: int = 26) -> tuple[float, float]:
    """(max change inside token window k, max change outside it) of an (N, d) token sequence."""
    diff = np.abs(before - after).max(-1)
    inside = np.zeros(len(diff), bool)
    inside[k * window : (k + 1) * window] = True
    return float(diff[inside].max()), float(diff[~inside].max())


@pytest.mark.parametrize("k", [0, 1, 3])
def test_windows_are_independent(module, converted, k):
    """Perturbing the frames of window k changes that window's outputs only, in ours and in transformers."""
    config, params = converted
    feats, lens = audios([650])
    x, y = feats.numpy(), perturb_window(feats.numpy(), k)
    ours = [aut.pack(*aut.encode(params, config, f[None], lens.numpy())) for f in (x, y)]
    with torch.no_grad():
        ref = [module(torch.from_numpy(f), lens).last_hidden_state.numpy() for f in (x, y)]
    for before, after in (ours, ref):
        inside, outside = window_change(before, after, k)
        assert inside > 1e-2 and outside == 0.0, (k, inside, outside)


def test_lengths_in_one_bucket_compile_once(converted):
    """Same full windows and tail sizes (the calls' shapes) -> no new compilation; a longer tail compiles."""
    config, params = converted
    feats = np.asarray(audios([3 * WINDOW_FRAMES] * 3)[0]).reshape(MEL, 3, -1).transpose(1, 0, 2)
    aut.encode(params, config, feats, np.array([201, 530, 101]))  # 3 windows + tails of 1, 2, 1 chunks
    with count_compilations() as compiles:
        for lengths in ([299, 599, 120], [250, 510, 199], [300, 599, 150]):
            out, valid = aut.encode(params, config, feats, np.array(lengths))
            assert np.asarray(valid).sum(-1).tolist() == aut.audio_token_count(np.array(lengths)).tolist()
        assert len(compiles) == 0
        aut.encode(params, config, feats, np.array([450, 1, 5]))  # 2 windows: new call shapes
        assert len(compiles) >= 1


def test_a_clip_computes_its_chunks_only():
    """Chunks computed (padding included) = chunks of the audio, for one clip of any length up to 20 min, and
    the set of call shapes stays small."""
    config = aut.AuTConfig(128, 32, 1, 2, 64, 8, 32, window_chunks=8)
    shapes = set()
    for frames in range(1, 120_001, 113):
        calls = aut.plan_calls(config, np.array([frames]))
        assert sum(len(c.chunks) for c in calls) == -(-frames // 100), frames
        shapes |= {(c.windows, c.tail_chunks) for c in calls}
    assert len(shapes) <= 4 + 5 * 8, sorted(shapes)


def test_weights_round_trip(module, converted):
    config, params = converted
    back = params_to_hf(params, aut.hf_rules(config), aut.param_specs(config))
    state = module.state_dict()
    assert back.keys() == state.keys()
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key].numpy(), err_msg=key)


def test_bad_inputs(converted):
    config, params = converted
    feats = np.zeros((2, MEL, 120), np.float32)
    with pytest.raises(ValueError, match="mel bins"):
        aut.encode(params, config, np.zeros((2, MEL + 1, 120), np.float32), np.array([120, 50]))
    with pytest.raises(ValueError, match="empty audio"):
        aut.encode(params, config, feats, np.array([120, 0]))
    with pytest.raises(ValueError, match="lengths must be"):
        aut.encode(params, config, feats, np.array([120]))
    with pytest.raises(ValueError, match="exceed"):
        aut.encode(params, config, feats, np.array([121, 5]))
    with pytest.raises(ValueError, match="batch, mel, frames"):
        aut.encode(params, config, feats[0], np.array([120]))
    with pytest.raises(ValueError, match="n_window"):
        aut.AuTConfig.from_hf(dict(TINY, n_window=4, max_source_positions=1500))


@pytest.mark.parametrize("lengths", [[650], [330, 130, 1]])
def test_cpu_layout_matches_transformers(module, converted, lengths):
    """The CPU layout (unrolled layers, packed linears) encodes as transformers."""
    config, params = converted
    feats, lens = audios(lengths)
    with torch.no_grad():
        want = module(feats, lens).last_hidden_state.numpy()
    per_audio = np.split(feats.numpy(), np.cumsum(lengths)[:-1], axis=1)
    padded = np.stack([np.pad(f, ((0, 0), (0, max(lengths) - f.shape[1]))) for f in per_audio])
    got = aut.pack(*aut.encode(aut.cpu_layout(params), config, padded, np.array(lengths)))
    np.testing.assert_allclose(got, want, atol=parity.MODULE_ATOL)
