"""AudioFlamingo3's processor in numpy, equal to transformers' `AudioFlamingo3Processor`.

Each clip is cut into 30-s windows (at most `max_audio_len` seconds; longer audio is truncated with a
warning, as transformers does), every window is padded to 30 s and turned into a 128-bin log-mel of its own,
and the clip's single `<sound>` placeholder becomes one `<sound>` per audio token of the whole clip. Texts
are tokenised and left-padded. Output: input_ids, attention_mask (b s int64), input_features
(w mels 3000 float32), input_features_mask (w 3000 int32), windows ordered sample-major.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from omni_jax.audio import log_mel
from omni_jax.audio.features import SAMPLING_RATE
from omni_jax.processing.common import (
    AudioTextProcessor,
    as_requests,
    check_placeholder_count,
    feature_config,
)
from omni_jax.processing.tokenizer import Tokenizer

ANSWER_PREFIXES = (
    "The spoken content of the audio is",
    "The transcription of the audio is",
    "The content of the input audio is",
)


@dataclasses.dataclass(frozen=True)
class AF3ProcessorConfig:
    audio_token: str = "<sound>"
    default_transcription_prompt: str = "Transcribe the input speech."
    max_audio_len: float = 600.0  # seconds
    chunk_length: int = 30  # seconds per window
    num_mel_bins: int = 128

    @property
    def window(self) -> int:
        return int(SAMPLING_RATE * self.chunk_length)

    @property
    def max_windows(self) -> int:
        return int(self.max_audio_len // self.chunk_length)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> AF3ProcessorConfig:
        processor, features = feature_config(Path(folder))
        names = ("audio_token", "default_transcription_prompt", "max_audio_len")
        return cls(
            **{k: processor[k] for k in names if k in processor},
            chunk_length=features.get("chunk_length", cls.chunk_length),
            num_mel_bins=features.get("feature_size", cls.num_mel_bins),
        )


def sound_token_count(frames):
    """`<sound>` tokens for `frames` valid mel frames: conv2 (stride 2), then 2x average pooling."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def split_windows(clip: np.ndarray, config: AF3ProcessorConfig) -> list[np.ndarray]:
    """Consecutive `chunk_length` windows of a clip (the last one shorter), at most `max_windows`."""
    n_windows = max(1, -(-len(clip) // config.window))
    if n_windows > config.max_windows:
        warnings.warn(
            f"audio of {len(clip) / SAMPLING_RATE:.1f} s exceeds max_audio_len={config.max_audio_len} s; "
            f"only its first {config.max_audio_len} s are used",
            stacklevel=4,
        )
        n_windows = config.max_windows
    end = min(len(clip), n_windows * config.window)
    return [clip[i * config.window : min((i + 1) * config.window, end)] for i in range(n_windows)]


def strip_answer_prefix(text: str) -> str:
    """Drop AF3's "The ... of the audio is" framing, a final period and matching quotes."""
    text = text.strip()
    prefix = next((p for p in ANSWER_PREFIXES if text.startswith(p)), "")
    text = text[len(prefix) :].strip()
    text = text[:-1].strip() if text.endswith(".") else text
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    return text


class AudioFlamingo3Processor(AudioTextProcessor):
    """Prompts with one `<sound>` per audio + 16-kHz clips -> AF3 model inputs (numpy)."""

    def __init__(self, tokenizer: Tokenizer, config: AF3ProcessorConfig | None = None, chat_template=None):
        super().__init__(tokenizer, chat_template)
        self.config = config or AF3ProcessorConfig()
        self.audio_token_id = tokenizer.token_id(self.config.audio_token)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> AudioFlamingo3Processor:
        return cls(Tokenizer.from_pretrained(folder), AF3ProcessorConfig.from_pretrained(folder))

    def audio_features(self, clips: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Windowed log-mel. -> input_features, input_features_mask, num_audio_tokens (one per clip)."""
        windows = [split_windows(clip, self.config) for clip in clips]
        features, mask = log_mel(
            [w for ws in windows for w in ws],
            num_mel_bins=self.config.num_mel_bins,
            padding="max_length",
            max_samples=self.config.window,
        )
        mask = np.asarray(mask)
        ends = np.cumsum([len(ws) for ws in windows])
        frames = np.array([mask[e - len(ws) : e].sum() for e, ws in zip(ends, windows, strict=True)])
        return {
            "input_features": np.asarray(features),
            "input_features_mask": mask,
            "num_audio_tokens": sound_token_count(frames),
        }

    def __call__(
        self,
        text,
        audio=None,
        *,
        sampling_rate: int = SAMPLING_RATE,
        padding_side: str = "left",
        add_special_tokens: bool = True,
        output_labels: bool = False,
    ) -> dict[str, np.ndarray]:
        """Expand each prompt's `<sound>` for its clip (audio[i] belongs to text[i]), tokenise, pad."""
        texts, clips = self._texts_and_clips(text, audio, sampling_rate)
        token = self.config.audio_token
        if clips is not None and len(clips) != len(texts):
            raise ValueError(
                f"got {len(texts)} prompt(s) but {len(clips)} audio(s); AF3 takes one audio per prompt"
            )
        counts = check_placeholder_count(texts, token, None if clips is None else len(clips))
        if clips is not None and any(c != 1 for c in counts):
            raise ValueError(f"each prompt needs exactly one {token} for its audio; per prompt: {counts}")
        out = self._tokenize(
            texts, clips, token, padding_side=padding_side, add_special_tokens=add_special_tokens
        )
        if output_labels:
            pad = self.tokenizer.special_tokens.get("pad_token")
            ignored = out["input_ids"] == self.audio_token_id
            if pad is not None:
                ignored |= out["input_ids"] == self.tokenizer.token_id(pad)
            out["labels"] = np.where(ignored, -100, out["input_ids"])
        return out

    def apply_transcription_request(self, audio, prompt=None, tokenize: bool = True, **kwargs):
        """One user turn per clip (a path or a waveform): [prompt (default: transcription request), audio],
        rendered with the generation prompt; processor outputs, or the prompts when not tokenize."""
        single = isinstance(audio, str | Path) or (isinstance(audio, np.ndarray) and audio.ndim == 1)
        items = [audio] if single else list(audio)
        if not items:
            raise ValueError("audio must contain at least one clip")
        prompts = as_requests(prompt, len(items))
        default = self.config.default_transcription_prompt
        conversations = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": default if p is None else p},
                        {"type": "audio", "path" if isinstance(a, str | Path) else "audio": a},
                    ],
                }
            ]
            for p, a in zip(prompts, items, strict=True)
        ]
        return self.apply_chat_template(
            conversations, tokenize=tokenize, add_generation_prompt=True, return_dict=True, **kwargs
        )

    def batch_decode(self, rows, skip_special_tokens: bool = False, strip_prefix: bool = False) -> list[str]:
        """Decode rows; with strip_prefix, drop the answer framing AF3 puts around transcriptions."""
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens)
        return [strip_answer_prefix(t) for t in texts] if strip_prefix else texts
