"""What the audio + text processors share: input checks, placeholder expansion, chat templates, decoding."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omni_jax import validation
from omni_jax.audio import load_audio
from omni_jax.audio.features import SAMPLING_RATE
from omni_jax.audio.io import to_float32
from omni_jax.processing.tokenizer import (
    Tokenizer,
    normalize_conversations,
    read_json,
    render_chat_template,
)


def as_texts(text) -> list[str]:
    """A prompt or a list of prompts -> list of prompts."""
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, Sequence) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"text must be a string or a non-empty list of strings, got {type(text).__name__}")
    return list(texts)


def as_clips(audio, sampling_rate: int = SAMPLING_RATE, name: str = "audio") -> list[np.ndarray]:
    """A 1-D waveform, an audio file path, or a list of them at 16 kHz -> list of float32 1-D arrays (files
    are read and resampled; integer PCM is scaled to [-1, 1); NaN / inf refused, naming the clip)."""
    if sampling_rate != SAMPLING_RATE:
        raise ValueError(
            f"audio must be sampled at {SAMPLING_RATE} Hz, got sampling_rate={sampling_rate}; resample it "
            "first (omni_jax.audio.resample, or omni_jax.audio.load_audio(path), which resamples on load)"
        )
    single = isinstance(audio, str | os.PathLike) or (isinstance(audio, np.ndarray) and audio.ndim == 1)
    clips = [audio] if single else audio
    if isinstance(clips, np.ndarray) or not isinstance(clips, Sequence) or not clips:
        raise ValueError(
            f"{name} must be a 1-D waveform, a file path, or a non-empty list of them, got "
            + (f"an array of shape {clips.shape}" if isinstance(clips, np.ndarray) else type(clips).__name__)
        )
    return [_clip(f"{name}[{i}]", clip) for i, clip in enumerate(clips)]


def _clip(name: str, clip) -> np.ndarray:
    if isinstance(clip, str | os.PathLike):
        return load_audio(clip)  # names the file in its errors
    clip = np.asarray(clip)
    if clip.ndim != 1 or clip.size == 0 or not np.issubdtype(clip.dtype, np.number):
        raise ValueError(
            f"{name} has shape {clip.shape} and dtype {clip.dtype}; expected non-empty 1-D samples"
        )
    return validation.finite_array(name, to_float32(clip))


def check_audio_length(clips: list[np.ndarray], limit: float) -> None:
    """Raise, naming each clip and its length, when a clip is longer than `limit` seconds (max_audio_len)."""
    if long := [
        f"{i} ({len(a) / SAMPLING_RATE:.1f} s)" for i, a in enumerate(clips) if len(a) > limit * SAMPLING_RATE
    ]:
        raise ValueError(
            f"audio {', '.join(long)} past the limit of {limit:g} s (max_audio_len, set in "
            "processor_config.json); cut the clip or raise the limit"
        )


def as_requests(prompt, n: int) -> list[str | None]:
    """None, one string for every clip, or n strings / None (None: the model's default request)."""
    prompts = [prompt] * n if prompt is None or isinstance(prompt, str) else prompt
    if (
        isinstance(prompts, np.ndarray)
        or not isinstance(prompts, Sequence)
        or len(prompts) != n
        or not all(p is None or isinstance(p, str) for p in prompts)
    ):
        raise ValueError(f"prompts must be None, a string or {n} strings/None (one per clip), got {prompt!r}")
    return list(prompts)


def expand_placeholders(texts: list[str], token: str, replacements: list[str]) -> list[str]:
    """Replace the k-th `token` across the batch (rows in order, left to right) by replacements[k]."""
    return expand_all(texts, {token: replacements})


def expand_all(texts: list[str], replacements: dict[str, list[str]]) -> list[str]:
    """One pass over the texts: the k-th occurrence of each token (counted across the batch, rows in order)
    becomes replacements[token][k]; what a replacement inserts is not matched again."""
    pending = {token: iter(r) for token, r in replacements.items() if r}
    if not pending:
        return list(texts)
    pattern = re.compile("|".join(re.escape(t) for t in pending))
    return [pattern.sub(lambda m: next(pending[m.group(0)]), t) for t in texts]


def check_placeholder_count(texts: list[str], token: str, n_audio: int | None) -> list[int]:
    """Per-row counts of `token`; raises unless their total is the number of audios. -> counts."""
    counts = [t.count(token) for t in texts]
    if n_audio is None and sum(counts):
        raise ValueError(f"found {sum(counts)} {token} in the text but no audio was passed")
    if n_audio is not None and sum(counts) != n_audio:
        raise ValueError(
            f"the text has {sum(counts)} {token} placeholder(s) (per row: {counts}) for {n_audio} audio(s)"
        )
    return counts


def feature_config(folder: Path) -> tuple[dict, dict]:
    """(processor settings, feature extractor settings) from processor_config.json (or, for the features,
    a legacy preprocessor_config.json)."""
    processor = read_json(folder / "processor_config.json")
    features = processor.get("feature_extractor") or read_json(folder / "preprocessor_config.json")
    if features.get("n_fft", 400) != 400 or features.get("hop_length", 160) != 160:
        raise ValueError(f"only Whisper's n_fft=400 / hop_length=160 log-mel is supported, got {features}")
    return processor, features


def _conversation_media(conversations: list[list[dict]], visual: bool) -> dict[str, list]:
    """Audio, images and videos of the content blocks, in order (audio paths are read and resampled to
    16 kHz; image and video sources are passed on as they are). visual: whether images / videos are taken."""
    media: dict[str, list] = {"audio": [], "images": [], "videos": []}
    for message in (m for chat in conversations for m in chat):
        content = message.get("content") or []
        for block in [] if isinstance(content, str) else content:
            kind = block.get("type") or next((k for k in ("image", "video", "audio") if k in block), None)
            if kind in ("image", "video") and not visual:
                raise ValueError(f"{kind} inputs are not supported by this model (text and audio only)")
            sources = [block[k] for k in (kind, "url", "path") if kind and k in block]
            if kind == "audio":
                media["audio"] += [
                    load_audio(s) if isinstance(s, str | Path) else np.asarray(s) for s in sources
                ]
            elif kind in ("image", "video"):
                media[f"{kind}s"] += sources
    return media


class AudioTextProcessor:
    """A tokenizer, a chat template and the model-specific `__call__(text, audio, ...)` of a subclass."""

    visual = False  # takes images and videos (`images=`, `videos=` in __call__)

    def __init__(self, tokenizer: Tokenizer, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template or tokenizer.chat_template

    def __call__(self, text, audio=None, **kwargs) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def audio_features(self, clips: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Model inputs of the clips, with "num_audio_tokens" (placeholder tokens each clip expands to)."""
        raise NotImplementedError

    @staticmethod
    def _texts_and_clips(text, audio, sampling_rate: int) -> tuple[list[str], list[np.ndarray] | None]:
        """Checked prompts and 16-kHz clips (None without audio)."""
        return as_texts(text), None if audio is None else as_clips(audio, sampling_rate)

    def _tokenize(self, texts: list[str], clips, token: str, **tokenizer_kwargs) -> dict[str, np.ndarray]:
        """`audio_features` of the clips (None: text only), the k-th `token` of the batch repeated for clip
        k's audio tokens, then the texts tokenised and padded; -> tokenizer outputs | audio features."""
        if clips is None:
            return self.tokenizer(texts, **tokenizer_kwargs)
        audio_inputs = self.audio_features(clips)
        counts = audio_inputs.pop("num_audio_tokens")
        texts = expand_placeholders(texts, token, [token * int(n) for n in counts])
        return self.tokenizer(texts, **tokenizer_kwargs) | audio_inputs

    def apply_chat_template(
        self,
        conversation,
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        chat_template: str | None = None,
        processor_kwargs: dict | None = None,
        **template_kwargs,
    ):
        """Render conversations (-> str / list[str]); with tokenize, also read their audio and run the
        processor (-> its dict with return_dict, else input_ids), as ProcessorMixin.apply_chat_template."""
        conversations, batched = normalize_conversations(conversation)
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this processor has no chat template")
        media = _conversation_media(conversations, self.visual) if tokenize else {}
        prompts = render_chat_template(
            template,
            conversations,
            add_generation_prompt=add_generation_prompt,
            **{**self.tokenizer.special_tokens, **template_kwargs},
        )
        if not tokenize:
            return prompts if batched else prompts[0]
        bos = self.tokenizer.special_tokens.get("bos_token")
        kwargs = {"add_special_tokens": not (bos and prompts[0].startswith(bos)), **(processor_kwargs or {})}
        visual = {k: media[k] for k in ("images", "videos") if media.get(k)}
        out = self(prompts, media.get("audio") or None, **visual, **kwargs)
        return out if return_dict else out["input_ids"]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return self.tokenizer.batch_decode(rows, skip_special_tokens)
