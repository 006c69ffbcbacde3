"""Whisper against transformers: a tiny random model (decoder, logits, generate settings, sampling) and the
real tiny.en weights on speech (logits, greedy batch, pipeline text, long form, loading, CLIs, bad input)."""

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

from omni_jax import parity
from omni_jax.audio import load_audio
from omni_jax.cli import generate as generate_cli
from omni_jax.cli import transcribe as transcribe_cli
from omni_jax.convert import ctranslate2 as ct
from omni_jax.convert import run as convert
from omni_jax.families.registry import load_pipeline
from omni_jax.families.whisper import parity as whisper_parity
from omni_jax.families.whisper import pipeline as whisper_pipeline
from omni_jax.families.whisper import system
from omni_jax.inference.sampling import Sampling
from omni_jax.parity.reference import randomize
from omni_jax.testing.checkpoints import shipped_speech
from omni_jax.testing.speech import SENTENCES, have_espeak, long_speech, synthesize
from omni_jax.testing.tiny_tokenizer import save_tokenizer_files

TRANSCRIPT = " Please call Stella and ask her to bring these things with her from the store."
MEL, FRAMES = 16, 60

# ---------------------------------------------------------------- tiny random model


@pytest.fixture(scope="module")
def tiny():
    """Random WhisperForConditionalGeneration: 2 + 2 layers, suppressed and begin-suppressed ids; the last id
    is <|notimestamps|>, so no id is a timestamp (transformers would re-decode from one, spec 7.6)."""
    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=96, num_mel_bins=MEL, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=FRAMES // 2, max_target_positions=24, pad_token_id=2, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    model = randomize(WhisperForConditionalGeneration(cfg), scale=0.3)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=1, eos_token_id=2, pad_token_id=2, no_timestamps_token_id=95,
        suppress_tokens=[5, 6, 7], begin_suppress_tokens=[8, 9], max_length=24,
        is_multilingual=False,
    )  # fmt: skip
    return model


def features(batch: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, MEL, FRAMES, generator=torch.Generator().manual_seed(seed))


def test_tiny_decoder_and_logits_parity(tiny):
    enc = torch.randn(2, FRAMES // 2, 32, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(2))
    report = parity.compare(tiny.model.decoder, ids, enc)
    assert report.ok and report.max_abs_diff <= 1e-4, report
    report = parity.compare(tiny, features(2), ids)
    assert report.ok, report


def test_tiny_greedy_generate_is_transformers(tiny):
    """Prompt [start, notimestamps], suppression every step and at the first token, the length rule."""
    report = parity.compare_generate(tiny, None, None, 5, input_features=features(3))
    assert report.ok, report
    config, params = whisper_parity.from_torch(tiny)
    assert config.generation.prompt == (1, 95)
    with pytest.raises(ValueError, match="max_new_tokens 23 outside 1..22"):
        system.generate(params, config, {"input_features": features(1).numpy()}, max_new_tokens=23)


def test_tiny_sampling(tiny):
    config, params = whisper_parity.from_torch(tiny)
    inputs = {"input_features": features(3).numpy()}  # the greedy test's shapes: one compilation less

    def run(sampling, seed=0):
        return np.asarray(
            system.generate(params, config, inputs, max_new_tokens=5, sampling=sampling, seed=seed)
        )

    hot = Sampling(temperature=1.5)
    a, b, c = run(hot), run(hot), run(hot, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.isin(a, [5, 6, 7]).any() and not np.isin(a[:, 0], [8, 9]).any()
    greedy = run(Sampling())
    assert np.array_equal(run(Sampling(temperature=0.7, top_k=1)), greedy)


def test_tiny_timestamps_are_transformers(tiny, monkeypatch):
    """Random weights emit timestamps everywhere (ids 61.. here): the pairing, monotonic, first-token and
    probability rules, and the seek loop's re-decoding, as transformers' generate(return_timestamps=True)."""
    generation = copy.deepcopy(tiny.generation_config)
    generation.no_timestamps_token_id, generation.max_initial_timestamp_index = 60, 5
    monkeypatch.setattr(tiny, "generation_config", generation)
    with torch.no_grad():
        ref = tiny.generate(features(3), return_timestamps=True, do_sample=False, num_beams=1).numpy()
    config, params = whisper_parity.from_torch(tiny)
    ours = system.generate(params, config, {"input_features": features(3).numpy()}, timestamps=True)
    assert (ref >= 61).any() and ref.shape[1] > 23  # timestamps, and more than one pass
    assert np.array_equal(np.asarray(ours), ref)


def test_timestamps_need_timestamp_tokens(tiny):
    config, params = whisper_parity.from_torch(tiny)  # <|notimestamps|> is the last id
    inputs = {"input_features": features(1).numpy()}
    with pytest.raises(ValueError, match=r"\(95\), but the vocabulary ends at id 95"):
        system.generate(params, config, inputs, timestamps=True)
    generation = dataclasses.replace(config.generation, no_timestamps_token_id=None)
    with pytest.raises(ValueError, match="has no no_timestamps_token_id"):
        system.generate(params, dataclasses.replace(config, generation=generation), inputs, timestamps=True)


# ---------------------------------------------------------------- real tiny.en weights


@pytest.fixture(scope="module")
def model_dir():
    return ct.whisper_tiny_dir()


@pytest.fixture(scope="module")
def hf(model_dir):
    """transformers' WhisperForConditionalGeneration with the CTranslate2 weights and generation settings."""
    return whisper_parity.reference_model(model_dir)


@pytest.fixture(scope="module")
def pipe(model_dir):
    return load_pipeline(model_dir)


@pytest.fixture(scope="module")
def clips():
    """The shipped clip and four espeak-ng sentences (different lengths)."""
    if not have_espeak():
        pytest.skip("espeak-ng is not installed")
    return [load_audio(shipped_speech())] + [synthesize(s) for s in SENTENCES[:4]]


@pytest.fixture(scope="module")
def long_audio(clips):
    """75 s of espeak-ng sentences (after `clips`: skipped without espeak-ng)."""
    return long_speech(75)


@pytest.fixture(scope="module")
def extractor():
    return transformers.WhisperFeatureExtractor(feature_size=80)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    file = str(model_dir / "tokenizer.json")
    return transformers.WhisperTokenizerFast(tokenizer_file=file, pad_token="<|endoftext|>")


def test_real_logits_parity(hf, pipe, extractor):
    feats = extractor(load_audio(shipped_speech()), sampling_rate=16000, return_tensors="pt").input_features
    ids = torch.tensor([[50257, 50362, 4222, 869, 45856, 290, 1265, 607]])
    with torch.no_grad():
        ref = hf(input_features=feats, decoder_input_ids=ids).logits.numpy()
    ours = np.asarray(system.logits(pipe.params, pipe.config, feats.numpy(), ids.numpy()))
    scale = np.abs(ref).max()
    report = parity.report("tiny.en logits", ref, ours, atol=1e-4 * scale)
    assert scale > 10 and report.ok, report


def test_real_greedy_batch_and_texts(hf, pipe, clips, extractor, tokenizer):
    """A batch of five clips of different lengths: the same tokens as transformers' generate, and the
    pipeline (our log-mel) gives the same texts."""
    feats = extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ref = hf.generate(feats, do_sample=False, num_beams=1).numpy()
    ours = parity.trim_to(ref, pipe.generate({"input_features": feats.numpy()}), 50256)
    assert np.array_equal(ours, ref)
    texts = [row["text"] for row in pipe.transcribe(clips, batch_size=len(clips))]
    assert texts == tokenizer.batch_decode(ref, skip_special_tokens=True)
    assert texts[0] == TRANSCRIPT


def test_long_form_is_the_chunked_pipeline(hf, pipe, clips, long_audio, extractor, tokenizer):
    """75 s of speech: the text of transformers' pipeline(chunk_length_s=30, batch_size=4); decoded in one
    batch of five windows with a short clip."""
    audio = long_audio
    asr = transformers.pipeline(
        "automatic-speech-recognition", model=hf, tokenizer=tokenizer, feature_extractor=extractor,
        chunk_length_s=30, batch_size=4,
    )  # fmt: skip
    ref = asr(audio, generate_kwargs=dict(do_sample=False, num_beams=1))["text"]
    long, short = pipe.transcribe([audio, clips[0]], batch_size=5)
    assert long["text"] == ref and short["text"] == TRANSCRIPT
    assert len(whisper_pipeline.chunk_windows(audio)) == 4


def test_timestamps_are_transformers(hf, pipe, clips, long_audio, extractor, tokenizer, monkeypatch):
    """One batch of five windows (the 75-s clip's four and the shipped clip) through
    transformers' pipeline(chunk_length_s=30, return_timestamps=True) and ours: the tokens of the two
    generate calls are the same, its chunks (strides, merges, seek-loop passes) are our segments."""
    calls = []
    for model in (hf, pipe):
        monkeypatch.setattr(model, "generate", recorder(model.generate, calls))
    asr = transformers.pipeline(
        "automatic-speech-recognition", model=hf, tokenizer=tokenizer, feature_extractor=extractor,
        chunk_length_s=30, batch_size=5,
    )  # fmt: skip
    audios = [long_audio, clips[0]]
    refs = asr(audios, return_timestamps=True, generate_kwargs=dict(do_sample=False, num_beams=1))
    rows = pipe.transcribe(audios, batch_size=5, timestamps=True)
    [ref, ours] = calls
    assert ref.shape[0] == 5 and (ref >= 50363).sum(axis=1).min() >= 2
    assert np.array_equal(parity.trim_to(ref, ours, 50256), ref)
    for row, r in zip(rows, refs, strict=True):
        assert row["text"] == r["text"]
        expected = [
            {"start": c["timestamp"][0], "end": c["timestamp"][1], "text": c["text"]} for c in r["chunks"]
        ]
        assert row["segments"] == expected
    assert len(rows[0]["segments"]) > 1 and rows[1]["segments"][0]["text"] == TRANSCRIPT


def recorder(generate, calls: list):
    """`generate` that appends the token ids it returns (as a numpy array) to `calls`."""

    def recorded(*args, **kwargs):
        out = generate(*args, **kwargs)
        calls.append(np.asarray(out))
        return out

    return recorded


def test_bad_inputs(pipe, tmp_path):
    with pytest.raises(ValueError, match=r"audio 0 \(31.0 s\) longer than the 30-s window"):
        pipe.transcribe(np.zeros(31 * 16000, np.float32), long_form=False)
    with pytest.raises(ValueError, match="sampled at 16000 Hz, got sampling_rate=22050"):
        pipe.transcribe(np.zeros(22050, np.float32), sampling_rate=22050)
    with pytest.raises(ValueError, match="max_new_tokens 447 outside 1..446"):
        pipe.transcribe(np.zeros(16000, np.float32), max_new_tokens=447)
    with pytest.raises(ValueError, match="no text request"):
        pipe.prepare([np.zeros(16000, np.float32)], ["what is said?"])


def test_loads_hf_ctranslate2_and_converted_folders(hf, pipe, model_dir, tokenizer, tmp_path):
    """An HF folder (save_pretrained) and `convert to-jax` of the CTranslate2 folder load to the same
    parameters; a tokenizer that does not fit the vocabulary is refused."""
    hf.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    convert.to_jax(model_dir, tmp_path / "jax")
    assert json.loads((tmp_path / "jax/config.json").read_text())["model_type"] == "whisper"
    for folder in (tmp_path / "hf", tmp_path / "jax"):
        other = load_pipeline(folder)
        assert other.config == pipe.config, folder
        for a, b in zip(*(jax_leaves(p.params) for p in (other, pipe)), strict=True):
            np.testing.assert_array_equal(a, b)
    alien = tmp_path / "alien"  # another model's tokenizer
    shutil.copytree(tmp_path / "hf", alien)
    save_tokenizer_files(alien, "audioflamingo3")
    with pytest.raises(ValueError, match="does not match its tokenizer.json"):
        load_pipeline(alien)


def jax_leaves(params):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_transcribe_and_generate_clis(capsys):
    """Default model (bundled tiny.en), --timestamps --json (segments as transformers' pipeline), the
    `[start -> end] text` lines; `python -m omni_jax.generate` on a whisper checkpoint."""
    speech = str(shipped_speech())
    assert transcribe_cli.main([speech, "--timestamps", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["audio"] == speech and row["text"] == TRANSCRIPT and len(row["tokens"]) == 16
    assert row["segments"] == [{"start": 0.0, "end": 5.36, "text": TRANSCRIPT}]
    assert transcribe_cli.main([speech, "--timestamps"]) == 0
    assert f"{speech}:\n[0.00 -> 5.36] {TRANSCRIPT.strip()}\n" in capsys.readouterr().out
    model = str(ct.whisper_tiny_dir())
    assert generate_cli.main(["--model", model, "--audio", speech, "--max-new-tokens", "30", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == [TRANSCRIPT]
    assert transcribe_cli.main([speech, "--model", "/nonexistent"]) == 2
    assert transcribe_cli.main(["/nonexistent.wav"]) == 2  # usage errors, before any model loads
    assert transcribe_cli.main([speech, "--batch-size", "0"]) == 2
