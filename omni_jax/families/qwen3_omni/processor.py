"""Qwen3-Omni's processor for text + audio in numpy, equal to transformers' `Qwen3OmniMoeProcessor`.

The clips of a call are padded with zeros to the longest one and turned into one 128-bin log-mel batch;
the k-th `<|audio_pad|>` of the batch (rows in order) becomes as many `<|audio_pad|>` as the AuT encoder
yields for clip k (`audio_token_count`); the template's `<|audio_start|>` / `<|audio_end|>` stay around it.
Texts are tokenised and the batch is always padded to its longest row (on the left; transformers pads only
with padding=True). Output: input_ids, attention_mask (b s int64), input_features (n mels f float32),
feature_attention_mask (n f int32). Images and videos are not supported yet.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from omni_jax.audio import log_mel
from omni_jax.audio.features import N_FFT, SAMPLING_RATE
from omni_jax.models.aut_encoder import audio_token_count
from omni_jax.processing.common import AudioTextProcessor, check_placeholder_count, feature_config
from omni_jax.processing.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Qwen3OmniProcessorConfig:
    num_mel_bins: int = 128
    # seconds per clip the pipeline accepts (transformers sets none; memory and time grow with it)
    max_audio_len: float = 600.0

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Qwen3OmniProcessorConfig:
        processor, features = feature_config(Path(folder))
        return cls(
            num_mel_bins=features.get("feature_size", cls.num_mel_bins),
            max_audio_len=float(processor.get("max_audio_len", cls.max_audio_len)),
        )


class Qwen3OmniProcessor(AudioTextProcessor):
    """Prompts with `<|audio_pad|>` placeholders + 16-kHz clips -> Qwen3-Omni Thinker inputs (numpy)."""

    def __init__(
        self, tokenizer: Tokenizer, config: Qwen3OmniProcessorConfig | None = None, chat_template=None
    ):
        super().__init__(tokenizer, chat_template)
        self.config = config or Qwen3OmniProcessorConfig()
        self.audio_token = tokenizer.special_token("audio_token")
        self.audio_token_id = tokenizer.token_id(self.audio_token)
        self.vision_tokens = [tokenizer.special_tokens.get(k) for k in ("image_token", "video_token")]

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Qwen3OmniProcessor:
        return cls(Tokenizer.from_pretrained(folder), Qwen3OmniProcessorConfig.from_pretrained(folder))

    def audio_features(self, clips: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Log-mel of the clips padded to the longest. -> input_features, feature_attention_mask,
        num_audio_tokens (one per clip)."""
        if max(len(c) for c in clips) <= N_FFT // 2:
            raise ValueError(
                f"the longest clip has {max(len(c) for c in clips)} samples; the log-mel needs more than "
                f"{N_FFT // 2} (its reflect padding)"
            )
        features, mask = log_mel(clips, num_mel_bins=self.config.num_mel_bins, padding="longest")
        mask = np.asarray(mask)
        return {
            "input_features": np.asarray(features),
            "feature_attention_mask": mask,
            "num_audio_tokens": audio_token_count(mask.sum(-1)),
        }

    def _check_text_only_modalities(self, texts: list[str], images, videos) -> None:
        if images is not None or videos is not None:
            raise ValueError("Qwen3-Omni images and videos are not supported yet (text and audio only)")
        for token in filter(None, self.vision_tokens):
            if any(token in t for t in texts):
                raise ValueError(f"the text contains {token}, but images and videos are not supported yet")

    def __call__(
        self,
        text,
        audio=None,
        images=None,
        videos=None,
        *,
        sampling_rate: int = SAMPLING_RATE,
        padding_side: str = "left",
        add_special_tokens: bool = True,
    ) -> dict[str, np.ndarray]:
        """Expand the k-th `<|audio_pad|>` for audio[k], tokenise, pad the batch to its longest row."""
        if text is None:
            raise ValueError("Qwen3-Omni's processor needs a text (with one <|audio_pad|> per audio)")
        texts, clips = self._texts_and_clips(text, audio, sampling_rate)
        self._check_text_only_modalities(texts, images, videos)
        check_placeholder_count(texts, self.audio_token, None if clips is None else len(clips))
        return self._tokenize(
            texts, clips, self.audio_token, padding_side=padding_side, add_special_tokens=add_special_tokens
        )
