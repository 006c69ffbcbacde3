"""A small offline byte-level BPE tokenizer holding the Qwen2 special tokens at their real ids.

Same pipeline as transformers' `Qwen2Tokenizer` (NFC, Qwen's split regex, byte level, byte-level decoder),
a few hundred BPE tokens learnt from a built-in corpus, and the special tokens of AudioFlamingo3 or Qwen3-Omni
in the model vocabulary at their real ids (151643 ...): tiny test models need `vocab_size >= 151676`.
`save_tokenizer_files` writes a folder transformers' AutoTokenizer / AutoProcessor can load offline.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
FIRST_SPECIAL_ID = 151643
# Qwen2 added tokens, ids 151643 ...; those from <tool_call> on are not special (as in Qwen2.5 / Qwen3)
QWEN2_TOKENS = (
    "<|endoftext|> <|im_start|> <|im_end|> <|object_ref_start|> <|object_ref_end|> <|box_start|> <|box_end|> "
    "<|quad_start|> <|quad_end|> <|vision_start|> <|vision_end|> <|vision_pad|> <|image_pad|> <|video_pad|>"
).split()
QWEN2_PLAIN_TOKENS = (
    "<tool_call> </tool_call> <|fim_prefix|> <|fim_middle|> <|fim_suffix|> <|fim_pad|> "
    "<|repo_name|> <|file_sep|>"
).split()
QWEN3_PLAIN_TOKENS = "<tool_response> </tool_response> <think> </think>".split()  # 151665 ... 151668

# Per model type: extra special tokens {id: token}, named tokens, model-specific named tokens.
# AF3: <sound> 151669, bos 151670, pad 151671 (spec audioflamingo3.md §1.3; the bos/pad strings are ours).
# Qwen3-Omni: spec qwen3_omni_vision_processing.md §6.2.
FLAVOURS = {
    "audioflamingo3": {
        "extra": {151669: "<sound>", 151670: "[BOS]", 151671: "[PAD]"},
        "plain": [],
        "named": {"bos_token": "[BOS]", "eos_token": "<|im_end|>", "pad_token": "[PAD]"},
        "model_specific": {},
    },
    "qwen3_omni_moe": {
        "extra": {
            151669: "<|audio_start|>",
            151670: "<|audio_end|>",
            151671: "<tts_pad>",
            151672: "<tts_text_bos>",
            151673: "<tts_text_eod>",
            151674: "<tts_text_bos_single>",
            151675: "<|audio_pad|>",
        },
        "plain": QWEN3_PLAIN_TOKENS,
        "named": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "model_specific": {
            "image_token": "<|image_pad|>",
            "audio_token": "<|audio_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
    },
}

# AF3's processor template (as its conversion script writes it): <sound> first, then the text items joined.
AF3_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages if m['content'] is not none %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% set audio = namespace(found=False) %}{% set text_buf = namespace(v='') %}"
    "{% for c in m['content'] %}"
    "{% if c.get('type') == 'audio' or 'audio' in c %}{% set audio.found = True %}"
    "{% elif c.get('type') == 'text' or 'text' in c %}"
    "{% set text_buf.v = text_buf.v + c['text'] %}{% endif %}"
    "{% endfor %}{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# ChatML with Qwen3-Omni's placeholder blocks, items rendered in their order, no default system turn.
QWEN3_OMNI_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c or 'image_url' in c %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'audio' or 'audio' in c or 'audio_url' in c %}"
    "<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif c['type'] == 'video' or 'video' in c %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in c %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATES = {"audioflamingo3": AF3_TEMPLATE, "qwen3_omni_moe": QWEN3_OMNI_TEMPLATE}

CORPUS = (
    "You are a helpful assistant.",
    "Transcribe the input speech.",
    "What is in this audio? Describe the sound, the music and the speaker in detail.",
    "The content of the input audio is a person saying hello to the world.",
    "Please answer the question about the recording: how many people are talking?",
    "The quick brown fox jumps over the lazy dog, 1234567890 times!",
    "system user assistant: yes, no, maybe. Thank you very much.",
)

WHISPER_FEATURES = {
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "sampling_rate": 16000,
    "hop_length": 160,
    "n_fft": 400,
    "padding_value": 0.0,
    "padding_side": "right",
    "dither": 0.0,
    "return_attention_mask": True,
}
QWEN_VISION = {
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "min_pixels": 3136,
    "max_pixels": 12845056,
}
PROCESSOR_CONFIGS = {
    "audioflamingo3": {
        "processor_class": "AudioFlamingo3Processor",
        "audio_token": "<sound>",
        "default_transcription_prompt": "Transcribe the input speech.",
        "max_audio_len": 600,
        "feature_extractor": {
            **WHISPER_FEATURES,
            "chunk_length": 30,
            "n_samples": 480000,
            "nb_max_frames": 3000,
        },
    },
    "qwen3_omni_moe": {
        "processor_class": "Qwen3OmniMoeProcessor",
        "feature_extractor": {
            **WHISPER_FEATURES,
            "chunk_length": 300,
            "n_samples": 4800000,
            "nb_max_frames": 30000,
        },
        "image_processor": {**QWEN_VISION, "image_processor_type": "Qwen2VLImageProcessor"},
        "video_processor": {**QWEN_VISION, "video_processor_type": "Qwen2VLVideoProcessor"},
    },
}


def _check_model_type(model_type: str) -> dict:
    if model_type not in FLAVOURS:
        raise ValueError(f"model_type must be one of {sorted(FLAVOURS)}, got {model_type!r}")
    return FLAVOURS[model_type]


def special_tokens(model_type: str) -> dict[str, tuple[int, bool]]:
    """token -> (real id, special?) for the model's added tokens."""
    flavour = _check_model_type(model_type)
    qwen = [(t, True) for t in QWEN2_TOKENS] + [(t, False) for t in QWEN2_PLAIN_TOKENS + flavour["plain"]]
    tokens = {t: (FIRST_SPECIAL_ID + i, special) for i, (t, special) in enumerate(qwen)}
    return tokens | {t: (i, True) for i, t in flavour["extra"].items()}


def _with_qwen2_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def build_tokenizer(model_type: str, vocab_size: int = 512) -> Tokenizer:
    """Byte-level BPE learnt from the built-in corpus, plus the model's special tokens at their real ids."""
    learner = _with_qwen2_pipeline(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    learner.train_from_iterator(CORPUS, trainer)
    learnt = json.loads(learner.to_str())["model"]
    tokens = special_tokens(model_type)
    vocab = learnt["vocab"] | {t: i for t, (i, _) in tokens.items()}
    merges = [tuple(m) for m in learnt["merges"]]
    tokenizer = _with_qwen2_pipeline(Tokenizer(models.BPE(vocab=vocab, merges=merges)))
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, (_, s) in tokens.items()])
    return tokenizer


def _tokenizer_config(model_type: str) -> dict:
    flavour = FLAVOURS[model_type]
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": s,
        }
        for t, (i, s) in special_tokens(model_type).items()
    }
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "processor_class": PROCESSOR_CONFIGS[model_type]["processor_class"],
        "added_tokens_decoder": added,
        "bos_token": None,
        "unk_token": None,
        **flavour["named"],
        "extra_special_tokens": flavour["model_specific"],
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "chat_template": TEMPLATES[model_type],
    }


def save_tokenizer_files(folder: str | Path, model_type: str) -> Path:
    """Write tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json,
    chat_template.jinja and processor_config.json for `model_type` ("audioflamingo3" or "qwen3_omni_moe")."""
    flavour = _check_model_type(model_type)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(model_type).save(str(folder / "tokenizer.json"))
    files = {
        "tokenizer_config.json": _tokenizer_config(model_type),
        "special_tokens_map.json": flavour["named"] | flavour["model_specific"],
        "processor_config.json": PROCESSOR_CONFIGS[model_type],
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "chat_template.jinja").write_text(TEMPLATES[model_type], encoding="utf-8")
    return folder
