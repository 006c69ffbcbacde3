"""Image and video preprocessing against transformers' torchvision-backend Qwen2VLImageProcessor /
Qwen2VLVideoProcessor, through reference outputs made once by tests/fixtures/make_vision_fixtures.py
(torchvision does not import beside the pinned torch): pixel values bit-exact, grids identical."""

from pathlib import Path

import numpy as np
import pytest
from fixtures import vision_cases as cases
from PIL import Image

from omni_jax.processing import vision

REFERENCE = np.load(Path(__file__).parents[1] / "fixtures" / "vision_reference.npz")
CONFIG = vision.VisionProcessorConfig()


def reference_pixels(key: str) -> np.ndarray:
    """The float32 pixel values behind the stored uint8 levels (mean = std = 0.5)."""
    return (REFERENCE[key].astype(np.float32) - np.float32(127.5)) / np.float32(127.5)


@pytest.mark.parametrize("name", list(cases.image_cases()))
def test_image_processor_bit_exact(name):
    image, overrides = cases.image_cases()[name]
    pixels, grid = vision.preprocess_images(image, CONFIG, **overrides)
    np.testing.assert_array_equal(grid, REFERENCE[f"image/{name}/grid"])
    np.testing.assert_array_equal(pixels, reference_pixels(f"image/{name}/levels"))


@pytest.mark.parametrize("name", list(cases.video_cases()))
def test_video_processor_bit_exact(name):
    frames, size = cases.video_cases()[name]
    pixels, grid, seconds = vision.preprocess_video(
        frames, fps=4.0, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]
    )
    np.testing.assert_array_equal(grid, REFERENCE[f"video/{name}/grid"])
    np.testing.assert_array_equal(pixels, reference_pixels(f"video/{name}/levels"))
    assert seconds.tolist() == [0.5] * len(grid)


@pytest.mark.parametrize("name", list(cases.SAMPLING))
def test_frame_sampling(name):
    kw = cases.SAMPLING[name]
    picks = {k: v for k, v in kw.items() if k in ("fps", "num_frames")}
    ours = vision.sample_frame_indices(kw["total"], video_fps=kw["fps_in"], **picks)
    np.testing.assert_array_equal(ours, REFERENCE[f"sampling/{name}"])


def test_per_channel_statistics():
    """Statistics that differ per channel (the class defaults, OpenAI CLIP): every feature normalised with
    its own channel's, in float32, from the levels the shared-statistics path sees."""
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    shared, _ = vision.preprocess_images(image, CONFIG)
    pixels, _ = vision.preprocess_images(image, CONFIG, image_mean=mean, image_std=std)
    levels = (shared * np.float32(127.5) + np.float32(127.5)).round().astype(np.float32)
    channel = np.arange(pixels.shape[1]) // (pixels.shape[1] // 3)
    m, s = (np.asarray(v, np.float32)[channel] * np.float32(255) for v in (mean, std))
    np.testing.assert_array_equal(pixels, (levels - m) / s)


def test_smart_resize_examples():
    """Spec 3.2: half-to-even rounding, the min and max branches."""
    sizes = {(60, 90): (64, 96), (31, 33): (64, 64), (10, 10): (64, 64), (1080, 1920): (1088, 1920),
             (80, 80): (64, 64), (112, 112): (128, 128)}  # fmt: skip
    for (h, w), want in sizes.items():
        assert vision.smart_resize(h, w, 32, 3136, 12845056) == want
    assert vision.smart_resize(300, 200, 32, 3136, 4096) == (64, 32)


def test_paths_and_video_files(tmp_path):
    """A PNG path equals its array; a video file decoded with PyAV (frames sampled at 2 fps but at least 4,
    its sound track at 16 kHz) equals its frames."""
    import av

    image = cases.smooth(40, 60)
    Image.fromarray(image).save(tmp_path / "a.png")
    np.testing.assert_array_equal(vision.preprocess_images(tmp_path / "a.png")[0],
                                  vision.preprocess_images(image)[0])  # fmt: skip
    path = tmp_path / "v.mov"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "rgb24"
        sound = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frames = cases.noise(8, 32, 48, 3, seed=3)
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
        tone = (8000 * np.sin(np.arange(8000) * 0.3)).astype(np.int16)[None]
        chunk = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        chunk.sample_rate = 8000
        out.mux(sound.encode(chunk))
        out.mux(sound.encode())
    loaded = vision.load_video(path, fps=2.0, audio=True)
    np.testing.assert_array_equal(loaded["frames"], frames[[0, 2, 4, 6]])
    assert loaded["fps"] == 4.0  # at least min_frames = 4 frames: 4 per second of this 1-s video
    assert abs(len(loaded["audio"]) - 16000) <= 400 and np.abs(loaded["audio"]).max() > 0.2
    ours = vision.preprocess_video(path, fps=2.0)
    want = vision.preprocess_video(frames[[0, 2, 4, 6]], fps=4.0)
    for a, b in zip(ours, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"non-empty, got \(0, 0, 3\)"):
        vision.preprocess_images(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="must be uint8"):
        vision.preprocess_images(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="aspect ratio"):
        vision.preprocess_images(np.zeros((2, 500, 3), np.uint8))
    with pytest.raises(ValueError, match="non-empty frame array"):
        vision.preprocess_video(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        vision.preprocess_images("nope.png")
    with pytest.raises(ValueError, match="fps must be positive"):
        vision.preprocess_video(cases.noise(2, 8, 8, 3), fps=0)
