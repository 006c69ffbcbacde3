"""Qwen3-Omni's processor in numpy, equal to transformers' `Qwen3OmniMoeProcessor`: text, audio, images and
video (with its sound track: audio in video).

    processor = Qwen3OmniProcessor.from_pretrained(folder)
    inputs = processor(text, audio=[clip], images=[path], videos=[frames], fps=2.0)

The clips of a call are padded with zeros to the longest one and turned into one 128-bin log-mel batch;
images and videos go through omni_jax.processing.vision (bit-exact with the torchvision processors). In one
pass over the texts the k-th `<|image_pad|>` / `<|video_pad|>` / `<|audio_pad|>` of the batch (rows in
order) becomes as many placeholders as item k yields; with `use_audio_in_video` a video's placeholder becomes
`<|audio_start|>` + its video and audio tokens merged by time + `<|audio_end|>` (the thinker must then be
given `use_audio_in_video=True` too). Texts are tokenised and the batch is always padded to its longest row
(on the left; transformers pads only with padding=True). Output: input_ids, attention_mask (b s int64),
input_features (n mels f float32), feature_attention_mask (n f int32), pixel_values, image_grid_thw,
pixel_values_videos, video_grid_thw, video_second_per_grid (float64).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from omni_jax.audio import log_mel
from omni_jax.audio.features import N_FFT, SAMPLING_RATE
from omni_jax.models.aut_encoder import audio_token_count
from omni_jax.processing import vision
from omni_jax.processing.common import (
    AudioTextProcessor,
    as_clips,
    as_texts,
    check_placeholder_count,
    expand_all,
    feature_config,
)
from omni_jax.processing.tokenizer import Tokenizer, read_json


@dataclasses.dataclass(frozen=True)
class Qwen3OmniProcessorConfig:
    num_mel_bins: int = 128
    image: vision.VisionProcessorConfig = vision.VisionProcessorConfig()
    video: vision.VisionProcessorConfig = vision.VisionProcessorConfig()
    position_id_per_seconds: float = 13.0  # the processor's (the thinker config must agree)
    video_size: tuple[int, int] = vision.VIDEO_SIZE  # min, max pixels of a video frame (the processor's)
    # seconds per clip the pipeline accepts (transformers sets none; memory and time grow with it)
    max_audio_len: float = 600.0

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Qwen3OmniProcessorConfig:
        """processor_config.json, else preprocessor_config.json (the release: features and images in one)."""
        processor, features = feature_config(Path(folder))
        image = processor.get("image_processor") or read_json(Path(folder) / "preprocessor_config.json")
        video = processor.get("video_processor") or image
        return cls(
            num_mel_bins=features.get("feature_size", cls.num_mel_bins),
            image=vision.VisionProcessorConfig.from_dict(image),
            video=vision.VisionProcessorConfig.from_dict(video),
            position_id_per_seconds=float(processor.get("position_id_per_seconds", 13.0)),
            video_size=tuple(processor.get("video_size", vision.VIDEO_SIZE)),
            max_audio_len=float(processor.get("max_audio_len", cls.max_audio_len)),
        )


def audio_in_video(grid, seconds_per_grid: float, audio_tokens: int, pps: float, merge: int) -> np.ndarray:
    """The interleaved span of a video and its sound track: True for a video token, False for audio. Video
    tokens of temporal patch k stand at time k * seconds_per_grid * pps, audio token j at j; merged by time,
    video first on ties (transformers' replace_video_with_audio_token)."""
    t, h, w = (int(x) for x in grid)
    video = np.repeat(np.arange(t), h * w // merge**2) * seconds_per_grid * pps  # float64
    audio = np.arange(audio_tokens, dtype=np.float64)
    times = np.concatenate([video, audio])
    order = np.lexsort((np.arange(len(times)), np.r_[np.zeros(len(video)), np.ones(len(audio))], times))
    return order < len(video)


class Qwen3OmniProcessor(AudioTextProcessor):
    """Prompts with `<|audio_pad|>` / `<|image_pad|>` / `<|video_pad|>` placeholders + 16-kHz clips, images
    and videos -> Qwen3-Omni Thinker inputs (numpy)."""

    visual = True

    def __init__(
        self, tokenizer: Tokenizer, config: Qwen3OmniProcessorConfig | None = None, chat_template=None
    ):
        super().__init__(tokenizer, chat_template)
        self.config = config or Qwen3OmniProcessorConfig()
        token = tokenizer.special_token
        self.audio_token, self.image_token, self.video_token = (
            token(k) for k in ("audio_token", "image_token", "video_token")
        )
        self.audio_bos, self.audio_eos = token("audio_bos_token"), token("audio_eos_token")
        self.audio_token_id = tokenizer.token_id(self.audio_token)

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

    def _resolve_audio(self, clips, videos, use_audio_in_video, slots, sampling_rate):
        """Every audio of the call in slot order and the slot of each video's sound track (transformers'
        _resolve_audio_from_video). -> (audio list or None, video_to_audio, stand-alone audio count)."""
        n_videos = len(videos or [])
        if not use_audio_in_video or not n_videos:
            return clips, [None] * n_videos, len(clips or [])
        clips = clips or []
        if slots is None:
            if clips:
                raise ValueError("audio together with use_audio_in_video needs audio_from_video_indices")
            slots = list(range(n_videos))
        if bad := [v for v in slots if v is not None and not 0 <= v < n_videos]:
            raise ValueError(f"audio_from_video_indices {bad} are not videos of the call ({n_videos})")
        video_to_audio = [None] * n_videos
        for slot, v in enumerate(slots):
            if v is not None:
                video_to_audio[v] = slot
        if len(clips) == len(slots):  # the tracks are given
            resolved = clips
        else:
            if slots.count(None) != len(clips):
                raise ValueError(f"audio_from_video_indices has {slots.count(None)} stand-alone slots for "
                                 f"{len(clips)} audio(s)")  # fmt: skip
            standalone = iter(clips)
            resolved = [next(standalone) if v is None else self._sound_track(videos, v) for v in slots]
        if silent := [v for v, slot in enumerate(video_to_audio) if slot is None]:
            raise ValueError(f"use_audio_in_video=True but video(s) {silent} have no audio track")
        return as_clips(resolved, sampling_rate), video_to_audio, slots.count(None)

    @staticmethod
    def _sound_track(videos, v: int) -> np.ndarray:
        if not isinstance(videos[v], str | Path):
            raise ValueError(
                f"video {v} is a frame array: pass its sound track in `audio` with audio_from_video_indices"
            )
        track = vision.load_video_audio(videos[v])
        if track is None or not track.size:
            raise ValueError(
                f"use_audio_in_video=True but video {v} ({videos[v]}) has no audio track (silent)"
            )
        return track

    def _check_counts(self, texts: list[str], images, videos, n_audio: int) -> None:
        check_placeholder_count(texts, self.audio_token, n_audio or None)
        for token, items, what in ((self.image_token, images, "image"), (self.video_token, videos, "video")):
            counts = [t.count(token) for t in texts]
            if sum(counts) != len(items or []):
                raise ValueError(
                    f"the text has {sum(counts)} {token} placeholder(s) (per row: {counts}) for "
                    f"{len(items or [])} {what}(s)"
                )

    def _video_replacement(self, grid, seconds, audio_tokens: int | None) -> str:
        merge = self.config.video.merge_size
        if audio_tokens is None:
            return self.video_token * (int(np.prod(grid)) // merge**2)
        span = audio_in_video(grid, seconds, audio_tokens, self.config.position_id_per_seconds, merge)
        return self.audio_bos + "".join(np.where(span, self.video_token, self.audio_token)) + self.audio_eos

    def __call__(
        self,
        text,
        audio=None,
        images=None,
        videos=None,
        *,
        sampling_rate: int = SAMPLING_RATE,
        fps: float = 1.0,
        use_audio_in_video: bool = False,
        audio_from_video_indices: list[int | None] | None = None,
        padding_side: str = "left",
        add_special_tokens: bool = True,
    ) -> dict[str, np.ndarray]:
        """Expand the placeholders for audio, images[k] and videos[k] (frame arrays or files, sampled at
        `fps`), tokenise, pad the batch to its longest row."""
        if text is None:
            raise ValueError("Qwen3-Omni's processor needs a text (with one placeholder per input)")
        texts, clips = as_texts(text), None if audio is None else as_clips(audio, sampling_rate)
        images = None if images is None else vision.as_items(images, "images")
        videos = None if videos is None else vision.as_items(videos, "videos")
        clips, video_to_audio, standalone = self._resolve_audio(
            clips, videos, use_audio_in_video, audio_from_video_indices, sampling_rate
        )
        self._check_counts(texts, images, videos, standalone)
        out: dict[str, np.ndarray] = {}
        replacements: dict[str, list[str]] = {}
        if images:
            out["pixel_values"], out["image_grid_thw"] = vision.preprocess_images(images, self.config.image)
            merge = self.config.image.merge_size**2
            replacements[self.image_token] = [
                self.image_token * int(g.prod() // merge) for g in out["image_grid_thw"]
            ]
        counts = []
        if clips:
            out |= self.audio_features(clips)
            counts = out.pop("num_audio_tokens").tolist()
            in_video = {slot for slot in video_to_audio if slot is not None}
            replacements[self.audio_token] = [
                self.audio_token * n for i, n in enumerate(counts) if i not in in_video
            ]
        if videos:
            lo, hi = self.config.video_size
            pixels, grids, seconds = vision.preprocess_video(
                videos, fps=fps, config=self.config.video, min_pixels=lo, max_pixels=hi
            )
            out |= {"pixel_values_videos": pixels, "video_grid_thw": grids, "video_second_per_grid": seconds}
            replacements[self.video_token] = [
                self._video_replacement(g, s, None if slot is None else counts[slot])
                for g, s, slot in zip(grids, seconds, video_to_audio, strict=True)
            ]
        texts = expand_all(texts, replacements)
        return self.tokenizer(texts, padding_side=padding_side, add_special_tokens=add_special_tokens) | out
