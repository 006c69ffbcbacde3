"""Processors and the offline tokenizer against transformers' processors built on the same tiny folders.

Features: transformers' torch log-mel is float32 (4.3e-5 from a float64 reference on the shipped speech clip;
ours 5.5e-6), so they are compared at MODULE_ATOL; ids and masks exactly.
"""

import json
from importlib import resources

import numpy as np
import pytest

from omni_jax.audio import load_audio
from omni_jax.families.audioflamingo3.processor import AF3ProcessorConfig, AudioFlamingo3Processor
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor
from omni_jax.parity import MODULE_ATOL
from omni_jax.processing import Tokenizer, render_chat_template
from omni_jax.testing.tiny_tokenizer import save_tokenizer_files

transformers = pytest.importorskip("transformers")

SR = 16000


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {m: save_tokenizer_files(root / m, m) for m in ("audioflamingo3", "qwen3_omni_moe")}


@pytest.fixture(scope="module")
def speech():
    return load_audio(resources.files("omni_jax") / "assets" / "speech.wav")


@pytest.fixture(scope="module")
def af3(folders):
    folder = folders["audioflamingo3"]
    return transformers.AutoProcessor.from_pretrained(folder), AudioFlamingo3Processor.from_pretrained(folder)


@pytest.fixture(scope="module")
def qwen3(folders):
    """transformers' processor from the folder's tokenizer, feature extractor and template. Its image and
    video processors need torchvision / PIL (absent here), are unused for text + audio, and are None."""
    folder = folders["qwen3_omni_moe"]
    features = json.loads((folder / "processor_config.json").read_text())["feature_extractor"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.ProcessorMixin, "check_argument_for_proper_class", lambda *_: None)
        ref = transformers.Qwen3OmniMoeProcessor(
            image_processor=None,
            video_processor=None,
            feature_extractor=transformers.WhisperFeatureExtractor(**features),
            tokenizer=transformers.AutoTokenizer.from_pretrained(folder),
            chat_template=(folder / "chat_template.jinja").read_text(),
        )
    return ref, Qwen3OmniProcessor.from_pretrained(folder)


def assert_same(ref, ours):
    """Same keys; ids and masks equal; features within MODULE_ATOL."""
    ref = {k: np.asarray(v) for k, v in ref.items()}
    assert sorted(ref) == sorted(ours)
    for key, value in ref.items():
        assert ours[key].shape == value.shape, key
        if value.dtype.kind == "f":
            np.testing.assert_allclose(ours[key], value, rtol=0, atol=MODULE_ATOL, err_msg=key)
        else:
            np.testing.assert_array_equal(ours[key], value, err_msg=key)


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# tokenizer and chat template


@pytest.mark.parametrize("model_type", ["audioflamingo3", "qwen3_omni_moe"])
def test_tiny_tokenizer_loads_in_transformers(folders, model_type):
    folder = folders[model_type]
    ref, ours = transformers.AutoTokenizer.from_pretrained(folder), Tokenizer.from_pretrained(folder)
    assert type(ref).__name__ == "Qwen2Tokenizer"
    text = "<|im_start|>user\nhéllo wörld 你好!<sound><|audio_pad|><think>  12\n<|im_end|>"
    assert ref(text)["input_ids"] == ours.encode(text)
    ids = ours.encode(text)
    for skip in (False, True):
        assert ref.decode(ids, skip_special_tokens=skip) == ours.decode(ids, skip_special_tokens=skip)
    assert [ref.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        151643,
        151644,
        151645,
    ]
    assert ref.eos_token_id == ours.token_id(ours.special_tokens["eos_token"]) == 151645
    assert ref.pad_token_id == ours.token_id(ours.special_tokens["pad_token"])
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    expected = ref.apply_chat_template(chat, tokenize=False, continue_final_message=True)
    assert ours.apply_chat_template(chat, continue_final_message=True) == expected


def test_special_token_ids(af3, qwen3):
    ref_af3, ours_af3 = af3
    assert ref_af3.audio_token_id == ours_af3.audio_token_id == 151669
    assert ref_af3.tokenizer.pad_token_id == 151671
    ref_q, ours_q = qwen3
    assert (ref_q.audio_token_id, ref_q.image_token_id, ref_q.video_token_id) == (151675, 151655, 151656)
    assert ours_q.audio_token_id == 151675
    tokens = ("audio_bos_token", "audio_eos_token", "vision_bos_token")
    assert [ours_q.tokenizer.token_id(ours_q.tokenizer.special_tokens[t]) for t in tokens] == [
        151669,
        151670,
        151652,
    ]


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "audio", "path": "x.wav"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Sure"}]},
        {"role": "user", "content": [{"type": "audio", "audio": np.zeros(3)}, {"type": "text", "text": "B"}]},
    ],
]


@pytest.mark.parametrize("model_type", ["audioflamingo3", "qwen3_omni_moe"])
@pytest.mark.parametrize("generation", [False, True])
def test_chat_template_rendering(af3, qwen3, model_type, generation):
    ref, ours = af3 if model_type == "audioflamingo3" else qwen3
    for conversation in CONVERSATIONS:
        expected = ref.apply_chat_template(conversation, add_generation_prompt=generation)
        assert ours.apply_chat_template(conversation, add_generation_prompt=generation) == expected
    expected = ref.apply_chat_template(CONVERSATIONS, add_generation_prompt=generation)
    assert ours.apply_chat_template(CONVERSATIONS, add_generation_prompt=generation) == expected


def test_template_environment_matches_transformers():
    """tojson, namespace, loop controls, {% generation %}, trim/lstrip blocks, continue_final_message."""
    from transformers.utils.chat_template_utils import render_jinja_template

    template = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}\n"
        "  {% if m.role == 'skip' %}{% continue %}{% endif %}\n"
        "  {% set ns.n = ns.n + 1 %}[{{ ns.n }}|{{ m.role }}|{{ m.content | tojson }}]\n"
        "  {% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% endif %}\n"
        "{% endfor %}{{ tools | tojson(indent=2) }}{{ eos }}"
    )
    chats = [
        [
            {"role": "user", "content": 'é "q"'},
            {"role": "skip", "content": "x"},
            {"role": "assistant", "content": "ok "},
        ]
    ]
    kwargs = {"tools": [{"name": "f", "parameters": {"a": 1}}], "eos": "<E>"}
    for extra in ({}, {"continue_final_message": True}):
        expected, _ = render_jinja_template(
            conversations=[list(c) for c in chats], chat_template=template, **kwargs, **extra
        )
        assert render_chat_template(template, chats, **kwargs, **extra) == expected
    with pytest.raises(Exception, match="boom"):
        render_chat_template("{{ raise_exception('boom') }}", chats)


# ----------------------------------------------------------------------------------------------------------
# AudioFlamingo3


def test_af3_one_clip(af3, speech):
    ref, ours = af3
    assert_same(
        ref("<sound>Transcribe the input speech.", speech),
        ours("<sound>Transcribe the input speech.", speech),
    )


def test_af3_batch_several_clips_and_long_clip(af3, speech):
    """Two prompts of different lengths (left padding), a 23-frame clip and a 60-s + 200-sample one
    (3 windows, the last with 2 frames: no token of its own)."""
    ref, ours = af3
    long = np.concatenate([speech] * 11)[: 60 * SR + 200]
    texts = ["<sound>Transcribe.", "Listen to this long recording carefully: <sound> What is said?"]
    clips = [speech[:3600], long]
    out = ours(texts, clips)
    assert_same(ref(texts, clips), out)
    assert out["input_features"].shape == (4, 128, 3000)
    assert (out["input_ids"] == ours.audio_token_id).sum(-1).tolist() == [6, 1500]
    assert_same(ref(texts, clips, output_labels=True), ours(texts, clips, output_labels=True))


def test_af3_chat_template_and_transcription_request(af3, speech):
    ref, ours = af3
    conversations = [
        [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": speech}, {"type": "text", "text": "Who speaks?"}],
            }
        ],
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Describe"}, {"type": "audio", "audio": noise(1.5, 0)}],
            }
        ],
    ]
    kwargs = {"tokenize": True, "add_generation_prompt": True, "return_dict": True}
    assert_same(
        ref.apply_chat_template(conversations, **kwargs), ours.apply_chat_template(conversations, **kwargs)
    )
    assert_same(ref.apply_transcription_request(speech), ours.apply_transcription_request(speech))
    prompts = [None, "Repeat it."]
    paths = ["a.wav", "b.wav"]
    assert ref.apply_transcription_request(
        paths, prompts, tokenize=False
    ) == ours.apply_transcription_request(paths, prompts, tokenize=False)


def test_af3_truncates_past_max_audio_len(folders, af3):
    """Beyond max_audio_len (60 s here, 600 s in the checkpoint) the clip is cut, with a warning, as in
    transformers."""
    ref = transformers.AutoProcessor.from_pretrained(folders["audioflamingo3"], max_audio_len=60)
    ours = AudioFlamingo3Processor(
        af3[1].tokenizer, AF3ProcessorConfig(max_audio_len=60), af3[1].chat_template
    )
    clip = noise(70.5, 1)
    with pytest.warns(UserWarning, match="max_audio_len"):
        out = ours("<sound>", clip)
    assert_same(ref("<sound>", clip), out)
    assert out["input_features"].shape[0] == 2


def test_af3_bad_inputs(af3, speech):
    _, ours = af3
    with pytest.raises(ValueError, match="0 <sound> placeholder"):
        ours("Transcribe.", speech)
    with pytest.raises(ValueError, match="2 <sound> placeholder"):
        ours("<sound><sound>Transcribe.", speech)
    with pytest.raises(ValueError, match="no audio was passed"):
        ours("<sound>Transcribe.")
    with pytest.raises(ValueError, match="2 prompt.* but 1 audio"):
        ours(["<sound>a", "<sound>b"], [speech])
    with pytest.raises(
        ValueError, match=r"per prompt: \[2, 0\]"
    ):  # totals match, rows do not: stricter than HF
        ours(["<sound><sound>a", "b"], [speech, speech])
    with pytest.raises(ValueError, match="16000 Hz"):
        ours("<sound>", speech, sampling_rate=8000)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        ours("<sound>", [np.zeros(0, np.float32)])


# ----------------------------------------------------------------------------------------------------------
# Qwen3-Omni


def test_qwen3_one_clip(qwen3, speech):
    ref, ours = qwen3
    text = "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>What is said?<|im_end|>\n"
    assert_same(ref(text=text, audio=speech, return_tensors="np"), ours(text, speech))


def test_qwen3_two_clips_of_different_lengths(qwen3, speech):
    """One clip per row, then both in one row; 16 805 samples: 106 valid frames padded, 105 alone."""
    ref, ours = qwen3
    clips = [speech[:16805], noise(3.0, 2)]
    conversations = [
        [{"role": "user", "content": [{"type": "audio", "audio": c}, {"type": "text", "text": t}]}]
        for c, t in zip(clips, ["Short?", "A longer question about it?"], strict=True)
    ]
    kwargs = {"tokenize": True, "add_generation_prompt": True, "return_dict": True}
    ref_out = ref.apply_chat_template(
        conversations, processor_kwargs={"padding": True, "return_tensors": "np"}, **kwargs
    )
    out = ours.apply_chat_template(conversations, **kwargs)
    assert_same(ref_out, out)
    assert out["feature_attention_mask"].sum(-1).tolist() == [106, 300]
    assert (out["input_ids"] == ours.audio_token_id).sum(-1).tolist() == [14, 39]
    text = "<|audio_start|><|audio_pad|><|audio_end|> and <|audio_start|><|audio_pad|><|audio_end|>"
    assert_same(ref(text=text, audio=clips, return_tensors="np"), ours(text, clips))
    assert_same(
        ref(text=["no audio", "plain text prompt"], padding=True, return_tensors="np"),
        ours(["no audio", "plain text prompt"]),
    )


def test_qwen3_bad_inputs(qwen3, speech):
    _, ours = qwen3
    pad = "<|audio_pad|>"
    with pytest.raises(ValueError, match="1 <\\|audio_pad\\|> placeholder.* for 2 audio"):
        ours(pad, [speech, speech])
    with pytest.raises(ValueError, match="no audio was passed"):
        ours(pad)
    with pytest.raises(ValueError, match="0 <\\|image_pad\\|> placeholder.* for 1 image"):
        ours(pad, speech, images=[np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="0 <\\|video_pad\\|> placeholder.* for 1 video"):
        ours(pad, speech, videos=[np.zeros((2, 8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> placeholder.* for 0 image"):
        ours("<|vision_start|><|image_pad|><|vision_end|>")
    video = [{"role": "user", "content": [{"type": "video", "path": "v.mp4"}]}]
    with pytest.raises(FileNotFoundError, match="v.mp4"):
        ours.apply_chat_template(video, tokenize=True)
    with pytest.raises(ValueError, match="more than 200"):
        ours(pad, speech[:200])
    with pytest.raises(ValueError, match="needs a text"):
        ours(None, speech)
