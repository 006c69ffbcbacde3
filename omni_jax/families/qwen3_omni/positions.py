"""Qwen3-Omni Thinker MRoPE positions: transformers' `get_rope_index` (three rows T, H, W per token, float32).

Each row's valid tokens are cut into blocks, each starting at 1 + the maximum of the block before: text runs
(consecutive positions on all three rows), start/end tokens, audio (the next `audio_token_count(frames)`
positions), images and videos (T = temporal grid index x `position_id_per_seconds`, x seconds per grid for a
video; H, W = merged grid row and column) and audio inside a video (the two merged by T). A row's delta is
max position + 1 - its valid length: decoding continues at valid length + delta. Text and audio alone give
0..n-1 on every row (transformers then takes a shortcut with the same valid positions). Padded slots hold 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from omni_jax.models.audio_common import hf_get, sub_config
from omni_jax.models.aut_encoder import audio_token_count


@dataclasses.dataclass(frozen=True)
class PositionConfig:
    """The thinker's placeholder ids and position settings (ids default to the released checkpoint's)."""

    audio_token_id: int = 151675
    audio_start_token_id: int = 151669
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    position_id_per_seconds: float = 13.0
    spatial_merge_size: int = 2

    @classmethod
    def from_hf(cls, hf: Any) -> PositionConfig:
        """From a Qwen3OmniMoeConfig or its thinker_config (object or dict)."""
        c = sub_config(hf, "thinker_config")
        ids = {
            f.name: int(hf_get(c, f.name, default=f.default))
            for f in dataclasses.fields(cls)
            if f.name.endswith("_id")
        }
        return cls(
            **ids,
            position_id_per_seconds=float(
                hf_get(c, "position_id_per_seconds", default=cls.position_id_per_seconds)
            ),
            spatial_merge_size=int(hf_get(sub_config(c, "vision_config"), "spatial_merge_size", default=2)),
        )


def _take(items: Iterator, what: str):
    try:
        return next(items)
    except StopIteration:
        raise ValueError(f"input_ids have more {what} blocks than {what} inputs") from None


def _run(n: int, start) -> np.ndarray:
    """n consecutive positions from `start` on all three rows. -> 3 n float32."""
    return np.broadcast_to(np.float32(start) + np.arange(n, dtype=np.float32), (3, n))


def _grid(grid, start, seconds_per_grid: float, config: PositionConfig) -> np.ndarray:
    """An image or video block (t-major, then h, then w after merging). -> 3 n float32."""
    t, h, w = (int(x) for x in grid)
    h, w = h // config.spatial_merge_size, w // config.spatial_merge_size
    ts = (
        np.arange(t).astype(np.float32)
        * np.float32(seconds_per_grid)
        * np.float32(config.position_id_per_seconds)
    )
    rows = np.meshgrid(ts, np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return np.stack([r.ravel() for r in rows]) + np.float32(start)


def _interleave(video: np.ndarray, audio: np.ndarray) -> list[np.ndarray]:
    """Audio inside a video: one token at a time, the video first while its T <= the audio position."""
    out, v, a = [], 0, 0
    while v < video.shape[1] and a < audio.shape[1]:
        if video[0, v] <= audio[0, a]:
            out.append(video[:, v : v + 1])
            v += 1
        else:
            out.append(audio[:, a : a + 1])
            a += 1
    return [*out, *(rest for rest in (video[:, v:], audio[:, a:]) if rest.shape[1])]


def _row_positions(
    ids: list[int], config: PositionConfig, audios, images, videos, audio_in_video
) -> np.ndarray:
    """Positions of one row's valid tokens (the iterators are shared by the rows, in order). -> 3 n."""
    c = config
    vision_starts = [i for i, x in enumerate(ids[:-1]) if x == c.vision_start_token_id]
    after = [ids[i + 1] for i in vision_starts]
    remain = {"audio": ids.count(c.audio_start_token_id), "image": after.count(c.image_token_id)}
    remain["video"] = after.count(c.audio_start_token_id if audio_in_video else c.video_token_id)
    has_vision = c.image_token_id in ids or c.video_token_id in ids
    blocks: list[np.ndarray] = []

    def start():
        return blocks[-1].max() + 1 if blocks else np.float32(0)

    st = 0
    for _ in range(remain["audio"] + remain["image"] + (0 if audio_in_video else remain["video"])):
        at = start()
        end = len(ids) + 1
        vision = (
            ids.index(c.vision_start_token_id, st)
            if has_vision and remain["image"] + remain["video"]
            else end
        )
        audio = ids.index(c.audio_start_token_id, st) if c.audio_token_id in ids and remain["audio"] else end
        first = min(vision, audio)
        if first == end:  # start tokens without placeholders: the rest is text
            break
        text = first - st
        if text:
            blocks.append(_run(text, at))
            at += text
        nested = first == vision and vision + 1 == audio  # audio inside a video: two start and end tokens
        edge = 2 if nested else 1
        blocks.append(_run(edge, at))
        at += edge
        if first == audio:
            n = int(audio_token_count(_take(audios, "audio")))
            blocks.append(_run(n, at))
            remain["audio"] -= 1
        elif ids[vision + 1] in (c.image_token_id, c.video_token_id):
            kind = "image" if ids[vision + 1] == c.image_token_id else "video"
            grid, seconds = _take(images, "image") if kind == "image" else _take(videos, "video")
            blocks.append(_grid(grid, at, seconds, c))
            n = blocks[-1].shape[1]
            remain[kind] -= 1
        elif nested:
            heard = _run(int(audio_token_count(_take(audios, "audio"))), at)
            grid, seconds = _take(videos, "video")
            blocks += _interleave(_grid(grid, at, seconds, c), heard)
            n = heard.shape[1] + int(np.prod(grid)) // c.spatial_merge_size**2
            remain["audio"] -= 1
            remain["video"] -= 1
        else:
            raise ValueError(
                f"token {ids[vision + 1]} after a vision start is no image, video or audio start"
            )
        st += text + edge + n + edge
        blocks.append(_run(edge, start()))
    if st < len(ids):
        blocks.append(_run(len(ids) - st, start()))
    return np.concatenate(blocks, axis=1)


def rope_index(
    config: PositionConfig,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    audio_lengths: Any = (),
    image_grid_thw: Any = None,
    video_grid_thw: Any = None,
    second_per_grids: Any = None,
    use_audio_in_video: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """MRoPE positions of a left- or right-padded batch. audio_lengths: mel frames per audio (rows in order);
    grids (n, 3) t h w in patches; second_per_grids: seconds per temporal grid of each video.
    -> (positions 3 b t float32, deltas b float32)."""
    ids = np.asarray(input_ids)
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape} must be the same (b, t)")
    grids = [
        np.zeros((0, 3), np.int64) if g is None else np.asarray(g).reshape(-1, 3)
        for g in (image_grid_thw, video_grid_thw)
    ]
    seconds = np.ones(len(grids[1])) if second_per_grids is None else np.asarray(second_per_grids, np.float32)
    audios = iter(np.asarray(audio_lengths, np.int64).reshape(-1).tolist())
    images = iter((g, 1.0) for g in grids[0])
    videos = iter(zip(grids[1], seconds.tolist(), strict=True))
    positions = np.zeros((3, *ids.shape), np.float32)
    deltas = np.zeros(ids.shape[0], np.float32)
    for b in range(ids.shape[0]):
        row = ids[b][mask[b]].tolist()
        if not row:
            continue
        pos = _row_positions(row, config, audios, images, videos, use_audio_in_video)
        positions[:, b, mask[b]] = pos
        deltas[b] = pos.max() + 1 - len(row)
    return positions, deltas
