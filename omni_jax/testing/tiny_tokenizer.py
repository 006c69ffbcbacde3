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

# Per model type, in tokenizer_files/<model_type>/: tokens.json (extra special tokens {id: token}, plain
# tokens, named tokens, model-specific named tokens), the chat template and processor_config.json.
# AF3: <sound> 151669, bos 151670, pad 151671 (spec audioflamingo3.md §1.3; the bos/pad strings are ours).
# Qwen3-Omni: spec qwen3_omni_vision_processing.md §6.2; its role words (user 872, system 8948, assistant
# 77091) are single tokens at their real ids, as the talker prompt reads roles from them. AF3's template is
# the one its conversion script writes (<sound> first, then the text items joined); Qwen3-Omni's is ChatML
# with its placeholder blocks.
FILES = Path(__file__).with_name("tokenizer_files")
MODEL_TYPES = tuple(sorted(d.name for d in FILES.iterdir() if d.is_dir()))

CORPUS = (
    "You are a helpful assistant.",
    "Transcribe the input speech.",
    "What is in this audio? Describe the sound, the music and the speaker in detail.",
    "The content of the input audio is a person saying hello to the world.",
    "Please answer the question about the recording: how many people are talking?",
    "The quick brown fox jumps over the lazy dog, 1234567890 times!",
    "system user assistant: yes, no, maybe. Thank you very much.",
)


def _flavour(model_type: str) -> dict:
    """tokens.json of `model_type`, its extra ids as ints."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {list(MODEL_TYPES)}, got {model_type!r}")
    flavour = json.loads((FILES / model_type / "tokens.json").read_text())
    return flavour | {"extra": {int(i): t for i, t in flavour["extra"].items()}}


def _file(model_type: str, name: str) -> str:
    return (FILES / model_type / name).read_text(encoding="utf-8")


def special_tokens(model_type: str) -> dict[str, tuple[int, bool]]:
    """token -> (real id, special?) for the model's added tokens."""
    flavour = _flavour(model_type)
    qwen = [(t, True) for t in QWEN2_TOKENS] + [(t, False) for t in QWEN2_PLAIN_TOKENS + flavour["plain"]]
    tokens = {t: (FIRST_SPECIAL_ID + i, special) for i, (t, special) in enumerate(qwen)}
    words = {t: (int(i), False) for i, t in flavour.get("words", {}).items()}  # role words at their real ids
    return tokens | words | {t: (i, True) for i, t in flavour["extra"].items()}


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
    flavour = _flavour(model_type)
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
        "processor_class": json.loads(_file(model_type, "processor_config.json"))["processor_class"],
        "added_tokens_decoder": added,
        "bos_token": None,
        "unk_token": None,
        **flavour["named"],
        "extra_special_tokens": flavour["model_specific"],
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "chat_template": _file(model_type, "chat_template.jinja"),
    }


def save_tokenizer_files(folder: str | Path, model_type: str) -> Path:
    """Write tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json,
    chat_template.jinja and processor_config.json for `model_type` ("audioflamingo3" or "qwen3_omni_moe")."""
    flavour = _flavour(model_type)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(model_type).save(str(folder / "tokenizer.json"))
    files = {
        "tokenizer_config.json": _tokenizer_config(model_type),
        "special_tokens_map.json": flavour["named"] | flavour["model_specific"],
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name in ("processor_config.json", "chat_template.jinja"):
        (folder / name).write_text(_file(model_type, name), encoding="utf-8")
    return folder
