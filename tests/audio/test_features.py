"""Log-mel parity with transformers' WhisperFeatureExtractor (numpy path), masks, compile reuse, bad input."""

import numpy as np
import pytest

from omni_jax.audio import load_audio, log_mel, log_mel_spectrogram
from omni_jax.audio.features import _unfloored_log_mel, mel_filters
from omni_jax.demo import shipped_speech
from omni_jax.parity import compare_features, whisper_features_reference

ATOL = 2e-5
LENGTHS = [1, 159, 160, 161, 16000, 479840, 480000, 496000]  # 1 sample ... 29.99 s, 30 s, 31 s


def noise(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 0.05, n)).astype(np.float32)


def assert_parity(clips, bins, padding):
    ref, ref_mask = whisper_features_reference(clips, num_mel_bins=bins, padding=padding)
    ours, mask = log_mel(clips, num_mel_bins=bins, padding=padding)
    assert np.asarray(ours).shape == ref.shape
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    assert np.abs(np.asarray(ours) - ref).max() <= ATOL


@pytest.mark.parametrize("bins", [80, 128])
def test_mel_filters_equal_transformers(bins):
    from transformers import WhisperFeatureExtractor

    np.testing.assert_allclose(
        mel_filters(bins), WhisperFeatureExtractor(feature_size=bins).mel_filters, atol=1e-12
    )


@pytest.mark.parametrize("bins", [80, 128])
@pytest.mark.parametrize("length", LENGTHS)
def test_single_clip_max_length(bins, length):
    assert_parity([noise(length, seed=length)], bins, "max_length")


@pytest.mark.parametrize("bins", [80, 128])
@pytest.mark.parametrize("padding", ["max_length", "longest"])
def test_mixed_batch(bins, padding):
    clips = [noise(n, seed=i) for i, n in enumerate([161, 16000, 16805, 48000, 479840])]
    assert_parity(clips, bins, padding)


@pytest.mark.parametrize("length", [160, 161, 300, 16000])
def test_single_clip_longest(length):
    assert_parity([noise(length, seed=3)], 128, "longest")


def test_real_speech_both_modes():
    speech = load_audio(shipped_speech())
    for padding in ("longest", "max_length"):
        report = compare_features([speech, speech[:20000]], num_mel_bins=128, padding=padding)
        assert report.ok, report


def test_truncation_to_max_length():
    clip = noise(496000)
    ours, mask = log_mel([clip], num_mel_bins=80)
    assert ours.shape == (1, 80, 3000) and int(mask.sum()) == 3000
    np.testing.assert_allclose(np.asarray(ours), np.asarray(log_mel([clip[:480000]], num_mel_bins=80)[0]))


def test_padding_frames_follow_transformers():
    """Silent padding frames sit at max - 2 after normalisation, not at zero (the per-example floor).
    The first two masked frames still overlap the clip's last 200 samples."""
    ours, mask = log_mel([noise(16000)], num_mel_bins=80)
    assert int(np.asarray(mask).sum()) == 100
    pad = np.asarray(ours)[0][:, 102:]
    np.testing.assert_allclose(pad, np.asarray(ours).max() - 2.0, atol=1e-6)


def test_no_recompile_for_new_contents():
    a, _ = log_mel([np.zeros(32000, np.float32)] * 2, num_mel_bins=80, padding="longest")
    before = log_mel_spectrogram._cache_size()
    for seed in range(3):
        log_mel([noise(32000, seed), noise(32000, seed + 10)], num_mel_bins=80, padding="longest")
    assert log_mel_spectrogram._cache_size() == before
    assert a.shape == (2, 80, 200)


def test_rows_are_independent_under_jit():
    """Each row's log-mel (floored at its own max - 8) equals that clip's alone, batched or jitted."""
    import jax

    quiet = noise(4800, 2) * 1e-3  # a row whose max is far below its neighbour's
    batch = np.stack([noise(4800, 1), quiet])
    one = jax.jit(lambda x: log_mel_spectrogram(x[None], num_mel_bins=80)[0])
    alone = np.stack([np.asarray(one(row)) for row in batch])
    batched = np.asarray(log_mel_spectrogram(batch, num_mel_bins=80))
    np.testing.assert_allclose(batched, alone, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 100, 101, 500])
def test_chunked_stft_equals_one_pass(chunk):
    """CPU runs the STFT in pairs of chunks of frames (a last chunk overlapping its neighbour, odd counts);
    accelerators in one pass."""
    import jax
    import jax.numpy as jnp

    batch = jnp.asarray(np.stack([noise(16160, seed) for seed in (3, 4, 5)]))  # odd chunk counts too
    filters = jnp.asarray(mel_filters(80).astype(np.float32))
    with jax.enable_x64(True):
        whole = _unfloored_log_mel(batch, filters, jnp.float64, None)
        chunked = _unfloored_log_mel(batch, filters, jnp.float64, chunk)
    assert chunked.shape == whole.shape == (3, 80, 101)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-6)


@pytest.mark.parametrize(
    "clips, kwargs, message",
    [
        ([np.zeros(0, np.float32)], {}, "empty"),
        ([np.array([0.0, np.nan], np.float32)], {}, "NaN or inf"),
        ([np.array([0.0, np.inf], np.float32)], {}, "NaN or inf"),
        ([np.zeros((1000, 2), np.float32)], {}, "1-D"),
        (np.zeros((2, 1000), np.float32), {}, "list of 1-D"),
        ([np.zeros(1000, np.float32)], {"sampling_rate": 44100}, "resample"),
        ([np.zeros(1000, np.float32)], {"num_mel_bins": 0}, "num_mel_bins"),
        ([np.zeros(1000, np.float32)], {"padding": "do_not_pad"}, "padding"),
        ([np.zeros(100, np.float32)], {"padding": "longest"}, "shorter than one hop"),
        ([], {}, "non-empty"),
    ],
)
def test_bad_input(clips, kwargs, message):
    with pytest.raises(ValueError, match=message):
        log_mel(clips, **kwargs)


def test_mel_bins_must_match_model():
    from omni_jax.audio import check_mel_bins

    features, _ = log_mel([noise(1600)], num_mel_bins=80)
    check_mel_bins(features, 80)
    with pytest.raises(ValueError, match="128 mel bins"):
        check_mel_bins(features, 128)
