"""Audio file I/O: formats, PCM conversion, mono mixing, resampling, atomic writes."""

import os

import numpy as np
import pytest
import soundfile as sf

from omni_jax.audio import load_audio, save_audio


def tone(n, sr, freq=440.0):
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


@pytest.mark.parametrize(
    "suffix, subtype",
    [(".wav", "PCM_16"), (".wav", "PCM_32"), (".wav", "FLOAT"), (".flac", "PCM_16"), (".ogg", "VORBIS")],
)
def test_formats_read_as_float32(tmp_path, suffix, subtype):
    path = tmp_path / f"a{suffix}"
    sf.write(path, tone(16000, 16000), 16000, subtype=subtype)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1 and abs(len(x) - 16000) <= 1
    tol = 0.05 if subtype == "VORBIS" else 1e-3
    np.testing.assert_allclose(x[:16000], tone(16000, 16000)[: len(x)], atol=tol)


def test_int16_pcm_is_scaled_not_rejected(tmp_path):
    path = tmp_path / "pcm.wav"
    sf.write(path, (tone(1600, 16000) * 32767).astype(np.int16), 16000, subtype="PCM_16")
    x = load_audio(path)
    assert np.abs(x).max() == pytest.approx(0.5, abs=1e-3)


def test_stereo_is_mixed_and_resampled(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = tone(44100, 44100), tone(44100, 44100, 880.0)
    sf.write(path, np.stack([left, right], 1), 44100, subtype="FLOAT")
    x = load_audio(path)
    assert abs(len(x) - 16000) <= 1
    expected = 0.5 * (tone(16000, 16000) + tone(16000, 16000, 880.0))
    np.testing.assert_allclose(x[100:15900], expected[100:15900], atol=2e-3)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="cannot read"):
        load_audio(bad)


def test_save_audio_is_atomic_and_roundtrips(tmp_path):
    x = tone(2400, 24000)
    path = save_audio(tmp_path / "out" / "y.wav", x, 24000)
    y, sr = sf.read(path, dtype="float32")
    assert sr == 24000
    np.testing.assert_allclose(y, x, atol=1e-4)
    assert os.listdir(path.parent) == ["y.wav"]


@pytest.mark.parametrize("samples, message", [(np.zeros((2, 10)), "1-D"), (np.array([np.nan]), "NaN")])
def test_save_audio_bad_input(tmp_path, samples, message):
    with pytest.raises(ValueError, match=message):
        save_audio(tmp_path / "x.wav", samples, 16000)
    assert list(tmp_path.iterdir()) == []


def test_save_audio_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        save_audio(tmp_path / "x.mp4", np.zeros(10), 16000)
