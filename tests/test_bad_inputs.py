"""The bad-input matrix: every case a new user hits gives one clear error (its type, and the words naming the
problem) before anything heavy runs, or a correct result. Checkpoint and converter cases are in
tests/convert/test_honesty.py."""

import json
import math

import numpy as np
import pytest
import soundfile as sf

from omni_jax import validation
from omni_jax.audio import load_audio, log_mel
from omni_jax.families.audioflamingo3 import pipeline as af3_pipeline
from omni_jax.families.audioflamingo3 import system as af3
from omni_jax.families.audioflamingo3.processor import AF3ProcessorConfig, AudioFlamingo3Processor
from omni_jax.families.qwen3_omni import pipeline as qwen_pipeline
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor, Qwen3OmniProcessorConfig
from omni_jax.families.qwen3_omni.system import ThinkerConfig
from omni_jax.inference import loop
from omni_jax.inference.sampling import Sampling
from omni_jax.models import code2wav, decoder
from omni_jax.processing import Tokenizer
from omni_jax.testing.checkpoints import ROOT, TINY_CONFIG, read_af3_config
from omni_jax.testing.tiny_tokenizer import save_tokenizer_files

AF3_HF = json.loads(TINY_CONFIG.read_text())
QWEN_HF = json.loads((ROOT / "configs" / "tiny-qwen3-omni-thinker.json").read_text())
CLIP = np.sin(np.linspace(0, 400, 16000)).astype(np.float32) * 0.3


# ---------------------------------------------------------------- sampling settings


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(temperature=math.nan), ValueError, "temperature must be a finite number, got nan"),
        (dict(temperature=math.inf), ValueError, "temperature must be a finite number, got inf"),
        (dict(temperature=-0.5), ValueError, "temperature must be >= 0"),
        (dict(temperature="0.7"), TypeError, "temperature must be a number, got '0.7'"),
        (dict(temperature=None), TypeError, "temperature must be a number, got None"),
        (dict(top_p=math.nan), ValueError, "top_p must be a finite number, got nan"),
        (dict(top_p=0.0), ValueError, "top_p must lie in (0, 1]"),
        (dict(top_p=1.5), ValueError, "top_p must lie in (0, 1]"),
        (dict(top_k=2.5), TypeError, "top_k must be an integer, got 2.5"),
        (dict(top_k=-1), ValueError, "top_k must be >= 0, got -1"),
        (dict(top_k=True), TypeError, "top_k must be an integer, got True"),
        (dict(repetition_penalty=math.nan), ValueError, "repetition_penalty must be a finite number"),
        (dict(repetition_penalty=-math.inf), ValueError, "repetition_penalty must be a finite number"),
        (dict(repetition_penalty=0.0), ValueError, "repetition_penalty must be > 0"),
        (dict(suppress_tokens=[1, 2]), TypeError, "suppress_tokens must be a tuple of ids, got list"),
        (dict(suppress_tokens=(1.5,)), TypeError, "suppress_tokens[0] must be an integer"),
        (dict(suppress_tokens=(3, -1)), ValueError, "suppress_tokens[1] must be >= 0"),
    ],
)
def test_sampling_settings(kwargs, error, words):
    with pytest.raises(error) as e:
        Sampling(**kwargs)
    assert words in str(e.value)


# ---------------------------------------------------------------- log_mel and audio files


@pytest.mark.parametrize(
    "waveforms, kwargs, error, words",
    [
        ("speech.wav", {}, TypeError, "not file paths: read them with load_audio(path)"),
        (["speech.wav"], {}, TypeError, "not file paths"),
        ([np.array([0.1, np.nan] * 400, np.float32)], {}, ValueError, "waveform 0 contains NaN or inf"),
        ([CLIP, np.full(800, np.inf, np.float32)], {}, ValueError, "waveform 1 contains NaN or inf"),
        (np.zeros((2, 800), np.float32), {}, ValueError, "got one array of shape (2, 800)"),
        ([np.zeros((800, 2), np.float32)], {}, ValueError, "mix to mono first"),
        ([np.zeros(0, np.float32)], {}, ValueError, "waveform 0 is empty"),
        ([np.zeros(800, np.complex64)], {}, ValueError, "expected real samples"),
        ([np.zeros(800, bool)], {}, ValueError, "expected real samples"),
        ([], {}, ValueError, "non-empty list of 1-D waveforms"),
        ([CLIP], dict(sampling_rate=8000), ValueError, "needs 16000 Hz audio, got sampling_rate=8000"),
        ([CLIP], dict(num_mel_bins=2.5), ValueError, "num_mel_bins must be an integer"),
        ([CLIP], dict(padding="same"), ValueError, "padding must be one of"),
    ],
)
def test_log_mel_inputs(waveforms, kwargs, error, words):
    with pytest.raises(error) as e:
        log_mel(waveforms, **kwargs)
    assert words in str(e.value)


def test_integer_pcm_is_scaled_never_reinterpreted():
    pcm = (CLIP * 32767).astype(np.int16)
    scaled, _ = log_mel([pcm], num_mel_bins=16, padding="longest")
    floats, _ = log_mel([pcm / 32768.0], num_mel_bins=16, padding="longest")
    assert np.abs(np.asarray(scaled) - np.asarray(floats)).max() < 1e-4


def test_audio_files(tmp_path, monkeypatch):
    bad = tmp_path / "nan.wav"
    sf.write(bad, np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"audio file .*nan\.wav contains NaN or inf"):
        load_audio(bad)
    with pytest.raises(FileNotFoundError, match="audio file not found: .*missing.wav"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(ValueError, match="cannot read audio file .*text.wav"):
        load_audio(tmp_path / "text.wav")
    with pytest.raises(TypeError, match="audio file must be a path"):
        load_audio(CLIP)
    monkeypatch.setenv("HOME", str(tmp_path))
    sf.write(tmp_path / "ok.wav", CLIP, 16000)
    assert load_audio("~/ok.wav").shape == CLIP.shape  # ~ expanded


# ---------------------------------------------------------------- processors and pipelines (no weights)


def tokenizer(tmp_path_factory, model_type: str) -> Tokenizer:
    return Tokenizer.from_pretrained(save_tokenizer_files(tmp_path_factory.mktemp(model_type), model_type))


@pytest.fixture(scope="module")
def af3_pipe(tmp_path_factory):
    words = tokenizer(tmp_path_factory, "audioflamingo3")
    processor = AudioFlamingo3Processor(words, AF3ProcessorConfig(max_audio_len=60))
    params = {"encoder": {"conv1": {"kernel": np.zeros(1, np.float32)}}}  # prepare reads only its dtype
    return af3_pipeline.Pipeline(af3.Config.from_hf(AF3_HF), params, processor, (151645,), 151643)


@pytest.fixture(scope="module")
def qwen_pipe(tmp_path_factory):
    words = tokenizer(tmp_path_factory, "qwen3_omni_moe")
    processor = Qwen3OmniProcessor(words, Qwen3OmniProcessorConfig(max_audio_len=2.0))
    return qwen_pipeline.Pipeline(ThinkerConfig.from_hf(QWEN_HF), {}, processor, (151645,), 151645)


@pytest.mark.parametrize("family", ["af3", "qwen"])
@pytest.mark.parametrize(
    "audios, prompts, error, words",
    [
        (np.zeros((2, 16000), np.float32), None, ValueError, "audios must be a 1-D waveform, a file path"),
        ([], None, ValueError, "non-empty list"),
        (CLIP[None, :1], None, ValueError, "audios must be a 1-D waveform"),
        ([CLIP, np.array([np.nan] * 800, np.float32)], None, ValueError, "audios[1] contains NaN or inf"),
        ([CLIP, np.zeros((10, 2))], None, ValueError, "audios[1] has shape (10, 2)"),
        ([np.array(["a", "b"])], None, ValueError, "audios[0] has shape (2,) and dtype <U1"),
        (["missing.wav"], None, FileNotFoundError, "audio file not found: missing.wav"),
        ([CLIP], ["one", "two"], ValueError, "prompts must be None, a string or 1 strings/None"),
        ([CLIP], [3], ValueError, "prompts must be None, a string or 1 strings/None"),
        ([np.zeros(16000 * 61, np.float32)], None, ValueError, "audio 0 (61.0 s) past the limit of"),
    ],
)
def test_prepare(af3_pipe, qwen_pipe, family, audios, prompts, error, words):
    pipe = af3_pipe if family == "af3" else qwen_pipe
    with pytest.raises(error) as e:
        pipe.prepare(audios, prompts)
    assert words in str(e.value)


def test_qwen3_omni_audio_length_limit_is_configurable(qwen_pipe):
    with pytest.raises(ValueError, match=r"audio 0 \(3.0 s\) past the limit of 2 s \(max_audio_len"):
        qwen_pipe.prepare([np.zeros(48000, np.float32)])
    assert Qwen3OmniProcessorConfig().max_audio_len == 600.0


def test_prepare_scales_integer_pcm(af3_pipe):
    pcm = (CLIP * 32767).astype(np.int16)
    ours = af3_pipe.prepare([pcm])["input_features"]
    assert np.abs(ours - af3_pipe.prepare([pcm / 32768.0])["input_features"]).max() < 1e-4


IDS = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.ones((1, 3), np.int64)}


@pytest.mark.parametrize("family", ["af3", "qwen"])
@pytest.mark.parametrize(
    "inputs, kwargs, error, words",
    [
        (IDS, dict(max_new_tokens=2.5), TypeError, "max_new_tokens must be an integer, got 2.5"),
        (IDS, dict(max_new_tokens=0), ValueError, "max_new_tokens must be >= 1, got 0"),
        (IDS, dict(max_new_tokens="8"), TypeError, "max_new_tokens must be an integer, got '8'"),
        (IDS, dict(seed=0.5), TypeError, "seed must be an integer"),
        (IDS, dict(sampling={"temperature": 1.0}), TypeError, "sampling must be an omni_jax Sampling"),
        (np.array([[1, 2, 3]]), {}, TypeError, "inputs must be the dict pipe.prepare returns"),
        ({"ids": np.array([[1]])}, {}, TypeError, "inputs must be the dict pipe.prepare returns"),
        ({"input_ids": np.array([1, 2, 3])}, {}, ValueError, "add a batch axis: ids[None]"),
        ({"input_ids": np.array([[1, 10**7]])}, {}, ValueError, "ids outside the vocabulary [0, 151"),
        ({"input_ids": np.array([[-1, 2]])}, {}, ValueError, "ids outside the vocabulary"),
        ({"input_ids": np.array([[0.5, 2.0]])}, {}, ValueError, "input_ids must be integer"),
        ({"input_ids": "hello"}, {}, TypeError, "input_ids must be an integer array"),
    ],
)
def test_generate_arguments(af3_pipe, qwen_pipe, family, inputs, kwargs, error, words):
    pipe = af3_pipe if family == "af3" else qwen_pipe
    with pytest.raises(error) as e:
        pipe.generate(inputs, **{"max_new_tokens": 4, **kwargs})
    assert words in str(e.value)
    with pytest.raises(error):
        next(pipe.stream(inputs, **{"max_new_tokens": 4, **kwargs}))


TEXT = decoder.Config(vocab_size=16, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=4, intermediate_size=8, sparse_layers=(False,))  # fmt: skip


@pytest.mark.parametrize(
    "inputs, kwargs, error, words",
    [
        (np.array([1, 2]), {}, ValueError, "add a batch axis"),
        (np.array([[1, 16]]), {}, ValueError, "ids outside the vocabulary [0, 16): [16]"),
        (np.array([[1, 2]]), dict(eos_ids=(99,)), ValueError, "eos_ids[0] = 99 is outside the vocabulary"),
        (np.array([[1, 2]]), dict(pad_id=1.5), TypeError, "pad_id must be an integer"),
        (np.array([[1, 2]]), dict(sampling="greedy"), TypeError, "sampling must be an omni_jax Sampling"),
    ],
)
def test_decoder_loop_arguments(inputs, kwargs, error, words):
    with pytest.raises(error) as e:
        loop.generate({}, TEXT, inputs, max_new_tokens=2, **kwargs)
    assert words in str(e.value)


# ---------------------------------------------------------------- configs refuse what they do not understand


def without(config: dict, *path: str) -> dict:
    config = json.loads(json.dumps(config))
    *parents, last = path
    node = config
    for p in parents:
        node = node[p]
    del node[last]
    return config


@pytest.mark.parametrize(
    "build, config, words",
    [
        (af3.Config.from_hf, QWEN_HF, "not an AudioFlamingo3 config: model_type 'qwen3_omni_moe'"),
        (af3.Config.from_hf, without(AF3_HF, "text_config"), "missing required key(s) ['text_config']"),
        (af3.Config.from_hf, without(AF3_HF, "text_config", "num_hidden_layers"), "['num_hidden_layers']"),
        (ThinkerConfig.from_hf, AF3_HF, "not a Qwen3-Omni config: model_type 'audioflamingo3'"),
        (ThinkerConfig.from_hf, without(QWEN_HF, "thinker_config", "audio_config"), "['audio_config']"),
        (decoder.Config.from_hf, {"model_type": "llama"}, "unsupported decoder model_type 'llama'"),
        (decoder.Config.from_hf, {"model_type": "qwen2", "vocab_size": 8}, "missing required key(s)"),
        (code2wav.Config.from_hf, {"model_type": "qwen2"}, "not a Code2Wav config"),
    ],
)
def test_configs_refuse(build, config, words):
    with pytest.raises(ValueError) as e:
        build(config)
    assert words in str(e.value)


def test_demo_refuses_a_config_of_another_model(capsys):
    from omni_jax.cli import demo

    assert demo.main(["--config", str(ROOT / "configs" / "tiny-qwen3-omni-thinker.json")]) == 2
    assert "model_type 'qwen3_omni_moe'; tiny checkpoints (and the demo)" in capsys.readouterr().err
    assert read_af3_config(TINY_CONFIG)["model_type"] == "audioflamingo3"


# ---------------------------------------------------------------- the shared checks themselves


@pytest.mark.parametrize(
    "check, args, error, words",
    [
        (validation.float_dtype, ("dtype", "int8"), ValueError, "dtype must be a floating dtype"),
        (validation.float_dtype, ("dtype", "bool"), ValueError, "floating dtype"),
        (validation.float_dtype, ("dtype", "fp33"), TypeError, "dtype 'fp33' is not a dtype"),
        (validation.path, ("path", 3), TypeError, "path must be a path (str or os.PathLike), got 3"),
        (validation.path, ("path", ""), TypeError, "must be a path"),
        (
            validation.folder,
            ("--model", "/no/such/dir"),
            FileNotFoundError,
            "--model: /no/such/dir not found",
        ),
    ],
)
def test_shared_checks(check, args, error, words):
    with pytest.raises(error) as e:
        check(*args)
    assert words in str(e.value)


def test_bfloat16_is_a_float_dtype():
    assert validation.float_dtype("dtype", "bfloat16").name == "bfloat16"
