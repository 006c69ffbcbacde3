"""Qwen3-Omni image and video preprocessing in numpy (Pillow decodes images, PyAV videos), bit-exact with
transformers' default (torchvision) `Qwen2VLImageProcessor` / `Qwen2VLVideoProcessor` on CPU.

    pixel_values, image_grid_thw = preprocess_images([path, pil_image, uint8_array])
    pixel_values_videos, video_grid_thw, video_second_per_grid = preprocess_video(frames, fps=2.0)

The resize is torch's CPU uint8 antialiased bicubic kernel, which is integer arithmetic: separable (width
first, a uint8 image between the passes), Keys cubic a = -0.5 widened by the downscale factor, int16 weights
with a per-axis precision, rounding shift. Rescale and normalise are fused ((x - 255 mean) / (255 std) in
float32). Patches come out as the vision encoder reads them: 2x2 merge blocks of consecutive rows, features
(C, T, row, col); an image fills both temporal slots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

CUBIC_A = -0.5  # the antialiased bicubic of torch (and Pillow); plain bicubic upsampling uses -0.75
CHUNK_BYTES = 1 << 22  # gathered taps in flight per step of a resize pass


@dataclasses.dataclass(frozen=True)
class VisionProcessorConfig:
    """Qwen2VLImageProcessor / Qwen2VLVideoProcessor settings (Qwen3-Omni release values)."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 3136
    max_pixels: int = 12845056
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def from_dict(cls, d: dict) -> VisionProcessorConfig:
        """From a preprocessor_config.json dict (min/max_pixels or size.shortest/longest_edge)."""
        size = d.get("size") or {}
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
        if "shortest_edge" in size:
            kw.setdefault("min_pixels", size["shortest_edge"])
        if "longest_edge" in size:
            kw.setdefault("max_pixels", size["longest_edge"])
        return cls(**kw)


VIDEO_SIZE = (128 * 32 * 32, 768 * 32 * 32)  # Qwen3OmniMoeProcessor's videos_kwargs size (min, max pixels)


# ---------------------------------------------------------------- sizes


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """transformers' smart_resize: multiples of `factor`, pixel count within bounds, aspect kept (Python's
    half-to-even round)."""
    if min(height, width) < 1:
        raise ValueError(f"image of {height}x{width} pixels: both sides must be at least 1")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# ---------------------------------------------------------------- the uint8 antialiased bicubic resize


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic (a = -0.5) in torch's operation order, float64."""
    a, x = CUBIC_A, np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Taps of one axis: (first input index n_out, int weights n_out K, precision bits)."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1 else 2.0
    invscale = 1.0 / scale if scale >= 1 else 1.0
    center = scale * (np.arange(n_out) + 0.5)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    size = np.minimum((center + support + 0.5).astype(np.int64), n_in) - xmin
    j = np.arange(size.max())
    w = np.where(j < size[:, None], _cubic((j + xmin[:, None] - center[:, None] + 0.5) * invscale), 0.0)
    total = w.sum(1, keepdims=True)
    w = np.where(total != 0, w / np.where(total != 0, total, 1), w)
    w_max = w.max()
    precision = next((p for p in range(22) if int(0.5 + w_max * (1 << (p + 1))) >= 1 << 15), 22)
    v = w * (1 << precision)
    return xmin, np.trunc(np.where(v < 0, v - 0.5, v + 0.5)).astype(np.int32), precision


def _resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """One pass along `axis` (-1: width, -2: height) of a uint8 array: the taps of every output index gathered
    (whole rows along the other axes, in chunks of output indices), their int32 weighted sum, rounding
    shift, clamp. -> uint8, the resized axis leading in memory."""
    xmin, w, precision = _axis_weights(x.shape[axis], n_out)
    taps = np.minimum(xmin[:, None] + np.arange(w.shape[1]), x.shape[axis] - 1)  # o k
    source = np.moveaxis(x, axis, 0)  # n_in ...
    out = np.empty((n_out, *source.shape[1:]), np.uint8)
    step = max(1, CHUNK_BYTES // (w.shape[1] * source[0].size))
    for lo in range(0, n_out, step):
        rows = slice(lo, lo + step)
        acc = np.einsum("ok,ok...->o...", w[rows], source[taps[rows]], dtype=np.int32, casting="safe")
        acc += 1 << (precision - 1)
        acc >>= precision
        np.clip(acc, 0, 255, out=out[rows], casting="unsafe")
    return np.moveaxis(out, 0, axis)


def resize_bicubic_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch's CPU uint8 antialiased bicubic resize of ... c h w images (width first; an unchanged axis is
    skipped)."""
    if image.dtype != np.uint8:
        raise ValueError(f"the integer resize takes uint8 images, got {image.dtype}")
    if image.shape[-1] != width:
        image = _resize_axis(image, width, -1)
    if image.shape[-2] != height:
        image = _resize_axis(image, height, -2)
    return image


# ---------------------------------------------------------------- inputs


def _composite_rgba(image: np.ndarray) -> np.ndarray:
    """4-channel uint8 c h w alpha-composited on white as torchvision's float round trip does."""
    x = np.moveaxis(image, 0, -1).astype(np.float32) * np.float32(1 / 255)
    rgb = x[..., :3] * x[..., 3:] + (np.float32(1) - x[..., 3:])
    return np.moveaxis((rgb * np.float32(255 + 1 - 1e-3)).astype(np.uint8), -1, 0)


def load_image(image: Any) -> np.ndarray:
    """A path, PIL image or array (h w, h w c or c h w; 1, 3 or 4 channels; channels first when ambiguous, as
    transformers) -> uint8 3 h w RGB."""
    from PIL import Image

    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        with Image.open(path) as img:
            img.load()
            return load_image(img)
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image.convert("RGBA"))
        return np.moveaxis(np.asarray(image.convert("RGB")), -1, 0)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(
            f"an image array must be (h, w), (h, w, c) or (c, h, w) and non-empty, got {array.shape}"
        )
    if array.shape[0] not in (1, 3, 4):
        if array.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"cannot find the channel axis (1, 3 or 4 channels) of an image of shape {array.shape}"
            )
        array = np.moveaxis(array, -1, 0)
    if array.dtype != np.uint8:
        raise ValueError(
            f"image arrays must be uint8 (0..255), got {array.dtype}: transformers would resize floats on "
            "its float path and rescale them by 1/255 again; convert with (x * 255).round().astype(np.uint8)"
        )
    if array.shape[0] == 1:
        array = np.repeat(array, 3, 0)
    return _composite_rgba(array) if array.shape[0] == 4 else array


def _normalisation(config: VisionProcessorConfig, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """transformers' fused rescale + normalise, x -> (x - mean/rescale) / (std/rescale) in float32: the shift
    and the divisor of each channel, shaped to broadcast over a patch's (C, T, row, col) features."""
    inv = np.float32(1.0 / config.rescale_factor)
    mean = np.asarray(config.image_mean, np.float32)[:channels] * inv
    std = np.asarray(config.image_std, np.float32)[:channels] * inv
    return mean.reshape(-1, 1, 1, 1), std.reshape(-1, 1, 1, 1)


def _grid(frames: int, height: int, width: int, config: VisionProcessorConfig) -> tuple[int, int, int]:
    """(t, h, w) in patches of `frames` frames (an image: 1) resized to height x width."""
    tp = config.temporal_patch_size
    return -(-frames // tp), height // config.patch_size, width // config.patch_size


def _patchify(frames: np.ndarray, config: VisionProcessorConfig, out: np.ndarray) -> None:
    """uint8 frames t 3 h w (t a multiple of the temporal patch, or 1: an image, the same in every temporal
    slot) -> normalised float32 patches written to out (t'h'w' x features): features (C, T, row, col), patches
    in 2x2 merge blocks. One transposing copy of the uint8 levels (an image's once, not per temporal slot),
    then transformers' float32 subtract and divide straight into out."""
    p, m, tp = config.patch_size, config.merge_size, config.temporal_patch_size
    t, ch, h, w = frames.shape
    gt, gh, gw = _grid(t, h, w, config)
    x = frames.reshape(gt, -1, ch, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    levels = np.ascontiguousarray(x)  # gt br bc ir ic C T pr pc (T = 1 for an image)
    target = out.reshape(*levels.shape[:6], tp, p, p)
    shift, divisor = _normalisation(config, ch)
    np.subtract(levels, shift, out=target, dtype=np.float32)  # an image's levels broadcast over T
    np.divide(target, divisor, out=target)


def _process(items: list, config: VisionProcessorConfig) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 frames t 3 h w, (height, width)) items -> (patches of all items float32, grids n 3 int64): each
    item resized, padded with its last frame to whole temporal patches and patchified straight into its rows
    of the output, the items in threads (numpy releases the GIL in large operations)."""
    grids = np.asarray([_grid(len(f), *size, config) for f, size in items], np.int64).reshape(-1, 3)
    ends = np.cumsum(grids.prod(1))
    tp, features = config.temporal_patch_size, 3 * config.temporal_patch_size * config.patch_size**2
    out = np.empty((int(ends[-1]), features), np.float32)

    def one(i: int) -> None:
        frames, size = items[i]
        frames = resize_bicubic_uint8(frames, *size)
        if len(frames) > 1 and len(frames) % tp:
            frames = frames[np.minimum(np.arange(-(-len(frames) // tp) * tp), len(frames) - 1)]
        _patchify(frames, config, out[ends[i] - grids[i].prod() : ends[i]])

    with ThreadPoolExecutor(min(len(items), os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(items))))
    return out, grids


def as_items(items: Any, what: str) -> list:
    """One input or a list (nested one level, as transformers flattens) -> a non-empty flat list."""
    if isinstance(items, np.ndarray) or not isinstance(items, Sequence) or isinstance(items, str):
        items = [items]
    flat = [x for item in items for x in (item if isinstance(item, list | tuple) else [item])]
    if not flat:
        raise ValueError(f"no {what} given")
    return flat


def preprocess_images(
    images: Any, config: VisionProcessorConfig | None = None, **overrides: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Images (one or a list: paths, PIL images, uint8 arrays) -> (pixel_values sum(h w) features float32,
    image_grid_thw n 3 int64), as Qwen2VLImageProcessor. `overrides` replace config fields (min_pixels...)."""
    config = dataclasses.replace(config or VisionProcessorConfig(), **overrides)
    items = []
    for i, image in enumerate(as_items(images, "images")):
        rgb = load_image(image)
        try:
            size = smart_resize(*rgb.shape[1:], config.factor, config.min_pixels, config.max_pixels)
        except ValueError as e:
            raise ValueError(f"image {i}: {e}") from None
        items.append((rgb[None], size))
    return _process(items, config)


# ---------------------------------------------------------------- video


def sample_frame_indices(
    total: int, *, video_fps: float | None = None, fps: float | None = None, num_frames: int | None = None,
    temporal_patch_size: int = 2, min_frames: int = 4, max_frames: int = 768,
) -> np.ndarray:  # fmt: skip
    """Qwen2VLVideoProcessor.sample_frames: `num_frames` (rounded half-to-even to the temporal patch) or `fps`
    frames per second of a video decoded at `video_fps`, uniformly (truncated float steps)."""
    if fps is not None and num_frames is not None:
        raise ValueError("num_frames and fps are mutually exclusive: pass one")
    if num_frames is not None:
        n = round(num_frames / temporal_patch_size) * temporal_patch_size
    elif fps is not None:
        if video_fps is None:
            raise ValueError("sampling by fps needs the video's own frame rate (video_fps)")
        cap = math.floor(min(max_frames, total) / temporal_patch_size) * temporal_patch_size
        n = min(max(total / video_fps * fps, min_frames), cap, total)
        n = math.floor(n / temporal_patch_size) * temporal_patch_size
    else:
        return np.arange(total)
    if not 0 < n <= total:
        raise ValueError(f"cannot sample {n} frames from a video of {total}: change num_frames or fps")
    return np.arange(0, total, total / n).astype(np.int32)


def video_frames(video: Any) -> np.ndarray:
    """Frames (t h w c or t c h w, uint8; 1, 3 or 4 channels) -> uint8 t 3 h w RGB."""
    frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(
            f"a video must be a non-empty frame array (t, h, w, c) or (t, c, h, w), got shape {frames.shape}"
        )
    return np.stack([load_image(frame) for frame in frames])


@contextlib.contextmanager
def _video_container(path: Path):
    """The open PyAV container of a video file that has a video stream; decoding errors inside the block
    become ValueError naming the file."""
    import av

    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            yield container
    except av.FFmpegError as e:
        raise ValueError(f"cannot decode video file {path}: {e}") from None


def load_video(path: str | Path, *, fps: float | None = 2.0, audio: bool = False) -> dict:
    """Decode a video file with PyAV. fps: frames sampled per second (None: every frame).
    -> {"frames": t h w 3 uint8, "fps": the rate the frames stand for, "audio": 16-kHz mono or None}."""
    path = Path(path)
    with _video_container(path) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
    keep = sample_frame_indices(len(frames), video_fps=rate, fps=fps)
    sampled = len(keep) * (rate or 1.0) / len(frames) if fps is not None else rate
    return {"frames": frames[keep], "fps": sampled or 1.0, "audio": load_video_audio(path) if audio else None}


def check_video_file(path: str | Path, *, audio: bool = False) -> None:
    """A video file exists and its first frame decodes; with `audio` it has a sound track too (else ValueError
    or FileNotFoundError naming the file). Decodes one frame only: a check before anything heavy runs."""
    path = Path(path)
    with _video_container(path) as container:
        if next(container.decode(video=0), None) is None:
            raise ValueError(f"video file {path} has no frames")
        if audio and not container.streams.audio:
            raise ValueError(f"video file {path} has no sound track (silent): it cannot be heard")


def load_video_audio(path: str | Path, sampling_rate: int = 16000) -> np.ndarray | None:
    """The sound track of a video file, mono at `sampling_rate` (float32), or None for a silent video."""
    import av

    from omni_jax.audio.io import resample, to_mono

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray() for f in container.decode(stream)]
        rate = stream.rate
    if not chunks:
        return None
    planar = chunks[0].ndim == 2 and chunks[0].shape[0] == stream.channels  # channels x samples per frame
    samples = np.concatenate(chunks, axis=1 if planar else 0)
    samples = samples.T if planar else samples.reshape(-1, stream.channels)
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples / float(np.iinfo(samples.dtype).max + 1)
    return resample(to_mono(samples.astype(np.float32)), rate, sampling_rate)


def preprocess_video(
    videos: Any, *, fps: float | Sequence[float] = 1.0, config: VisionProcessorConfig | None = None,
    min_pixels: int = VIDEO_SIZE[0], max_pixels: int = VIDEO_SIZE[1],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Videos (a frame array t h w c / t c h w uint8, a path decoded at `fps`, or a list of them) ->
    (pixel_values_videos features float32, video_grid_thw n 3 int64, video_second_per_grid n float64) as
    Qwen3OmniMoeProcessor runs Qwen2VLVideoProcessor: frames resized per video within min/max_pixels
    (the processor's video size), padded with the last frame to whole temporal patches, and
    temporal_patch_size / fps seconds per grid, `fps` being the rate the frames were sampled at."""
    config = config or VisionProcessorConfig()
    items = as_items(videos, "videos") if not isinstance(videos, np.ndarray) or videos.ndim != 4 else [videos]
    rates = [float(fps)] * len(items) if np.ndim(fps) == 0 else [float(f) for f in fps]
    if len(rates) != len(items) or min(rates) <= 0:
        raise ValueError(f"fps must be positive, one value or one per video: {fps} for {len(items)} video(s)")
    work = []
    for i, (video, rate) in enumerate(zip(items, rates, strict=True)):
        if isinstance(video, str | Path):
            loaded = load_video(video, fps=rate)
            video, rates[i] = loaded["frames"], loaded["fps"]
        try:
            frames = video_frames(video)
            size = smart_resize(*frames.shape[2:], config.factor, min_pixels, max_pixels)
        except ValueError as e:
            raise ValueError(f"video {i}: {e}") from None
        work.append((frames, size))
    pixels, grids = _process(work, config)
    seconds = np.asarray([config.temporal_patch_size / r for r in rates], np.float64)
    return pixels, grids, seconds
