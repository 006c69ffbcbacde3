"""CTranslate2 Whisper reader; JAX Whisper encoder with real tiny.en weights on real (espeak-ng) speech."""

import struct
from importlib import resources

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from omni_jax import parity
from omni_jax.audio.io import load_audio
from omni_jax.convert import ctranslate2 as ct

SPEECH = (
    resources.files("omni_jax") / "assets" / "speech.wav"
)  # espeak-ng -v en-us -s 120, resampled to 16 kHz
TRANSCRIPT = "Please call Stella and ask her to bring these things with her from the store."


@pytest.fixture(scope="module")
def model_dir():
    return ct.whisper_tiny_dir()


@pytest.fixture(scope="module")
def whisper(model_dir):
    """WhisperForConditionalGeneration built from the converted CTranslate2 file."""
    config, state = ct.load_whisper(model_dir)
    model = WhisperForConditionalGeneration(WhisperConfig(**config)).eval()
    state = {f"model.{k}": torch.from_numpy(v) for k, v in state.items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]  # tied
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def speech_features():
    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000)
    return extractor(load_audio(SPEECH), sampling_rate=16000, return_tensors="pt").input_features


def test_reader_inventory(model_dir):
    model = ct.read_model_bin(model_dir / "model.bin")
    assert (model.spec, model.revision) == ("WhisperSpec", 3)
    assert len(model.variables) == 149  # 148 stored + the resolved output-projection alias
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    state = ct.whisper_state_dict(model)
    assert len(state) == 167 and all(v.dtype == np.float32 for v in state.values())
    q, k, v = np.split(model.variables["encoder/layer_2/self_attention/linear_0/weight"], 3)
    np.testing.assert_array_equal(state["encoder.layers.2.self_attn.k_proj.weight"], k.astype(np.float32))
    np.testing.assert_array_equal(state["encoder.layers.2.self_attn.v_proj.weight"], v.astype(np.float32))
    assert "encoder.layers.2.self_attn.k_proj.bias" not in state


def test_config(model_dir):
    config, _ = ct.load_whisper(model_dir)
    expected = dict(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4)
    expected.update(encoder_attention_heads=6, encoder_ffn_dim=1536, max_source_positions=1500)
    expected.update(activation_function="gelu", decoder_start_token_id=50257, eos_token_id=50256)
    assert {k: config[k] for k in expected} == expected


def write_model_bin(path, variables, version=6, aliases=()):
    """A minimal CTranslate2 binary (for the error paths)."""

    def string(s):
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.float16): 4}
    out = struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, a in variables.items():
        out += string(name) + struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape)
        out += struct.pack("<BI", codes[a.dtype], a.nbytes) + a.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(string(a) + string(t) for a, t in aliases)
    path.write_bytes(out)
    return path


def test_reader_errors(tmp_path):
    w = {"encoder/conv1/weight": np.ones((4, 2, 3), np.float16)}
    assert ct.read_model_bin(write_model_bin(tmp_path / "ok.bin", w)).variables.keys() == w.keys()
    with pytest.raises(ValueError, match="binary version 5"):
        ct.read_model_bin(write_model_bin(tmp_path / "v5.bin", w, version=5))
    good = (tmp_path / "ok.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(good[:-10])
    with pytest.raises(ValueError, match="truncated"):
        ct.read_model_bin(tmp_path / "cut.bin")
    (tmp_path / "long.bin").write_bytes(good + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        ct.read_model_bin(tmp_path / "long.bin")
    with pytest.raises(ValueError, match="missing variable"):
        ct.read_model_bin(write_model_bin(tmp_path / "alias.bin", w, aliases=[("a/weight", "b/weight")]))
    quantized = {
        "encoder/conv1/weight": np.ones((4, 2, 3), np.int8),
        "encoder/conv1/weight_scale": np.ones(4, np.float32),
    }
    with pytest.raises(ValueError, match="quantized"):
        ct.whisper_state_dict(ct.read_model_bin(write_model_bin(tmp_path / "q.bin", quantized)))
    odd = {"encoder/layer_0/self_attention/linear_0/bias": np.ones(6, np.float16)}  # non-zero k bias
    with pytest.raises(ValueError, match="k bias"):
        ct.whisper_state_dict(ct.read_model_bin(write_model_bin(tmp_path / "k.bin", odd)))


def test_real_weights_transcribe(whisper, model_dir, speech_features):
    """The converted weights are right: transformers transcribes the espeak-ng clip correctly."""
    from tokenizers import Tokenizer

    whisper.generation_config.no_timestamps_token_id = 50362
    whisper.generation_config.is_multilingual = False
    with torch.no_grad():
        ids = whisper.generate(speech_features, do_sample=False, num_beams=1, max_new_tokens=24)
    text = Tokenizer.from_file(str(model_dir / "tokenizer.json")).decode(
        ids[0].tolist(), skip_special_tokens=True
    )
    assert text.strip() == TRANSCRIPT


def test_real_whisper_encoder_on_speech(whisper, speech_features):
    """JAX vs transformers' WhisperEncoder, real weights, real speech: max abs <= 1e-4 x output scale."""
    encoder = whisper.model.encoder
    reference, ours = parity.parity_case(encoder).run(encoder, speech_features)
    scale = np.abs(reference).max()
    report = parity.report("WhisperEncoder", reference, ours, atol=1e-4 * scale)
    assert scale > 1.0 and report.ok, report
