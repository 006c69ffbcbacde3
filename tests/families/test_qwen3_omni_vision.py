"""Qwen3-Omni with images and video against transformers (configs/tiny-qwen3-omni-thinker.json, float32, CPU):
the processor (against Qwen3OmniMoeProcessor's outputs stored by tests/fixtures/make_vision_fixtures.py),
rope_index, prefill logits and greedy tokens of Qwen3OmniMoeThinkerForConditionalGeneration for image + text,
video with its audio (audio in video) and a left-padded batch mixing the modalities; the pipeline, the
generate CLI and the parity CLI's vision stages."""

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import vision_cases as cases

from omni_jax import parity
from omni_jax.families.qwen3_omni import pipeline as qwen3_omni
from omni_jax.families.qwen3_omni import system as thinker
from omni_jax.families.qwen3_omni.positions import PositionConfig, rope_index
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor, Qwen3OmniProcessorConfig
from omni_jax.parity.reference import randomize
from omni_jax.processing.vision import VisionProcessorConfig
from omni_jax.testing.tiny_tokenizer import save_tokenizer_files

CONFIG = resources.files("omni_jax").parent / "configs" / "tiny-qwen3-omni-thinker.json"
REFERENCE = np.load(Path(__file__).parents[1] / "fixtures" / "vision_reference.npz")
NEW = 8
# the tiny vision tower: 2x2 patches, merge 2 (4-pixel factor); small frames keep the prompts short
TINY_VISION = VisionProcessorConfig(patch_size=2, min_pixels=64, max_pixels=1024)
TINY = Qwen3OmniProcessorConfig(image=TINY_VISION, video=TINY_VISION, video_size=(64, 256))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return save_tokenizer_files(tmp_path_factory.mktemp("tok"), "qwen3_omni_moe")


@pytest.fixture(scope="module")
def model():
    """The tiny thinker, re-drawn; token embeddings, the audio tower's and the mergers' outputs x10 so the
    tokens, the audio and the pictures steer the greedy path."""
    from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

    torch.manual_seed(0)
    config = Qwen3OmniMoeThinkerConfig(**json.loads(CONFIG.read_text())["thinker_config"])
    model = randomize(Qwen3OmniMoeThinkerForConditionalGeneration(config))
    m = model.model
    with torch.no_grad():
        mergers = (m.visual.merger, m.visual.merger_list[0])
        for p in (m.language_model.embed_tokens.weight, *m.audio_tower.proj2.parameters(),
                  *(q for merger in mergers for q in merger.mlp[2].parameters())):  # fmt: skip
            p.mul_(10)
    model.generation_config.eos_token_id = qwen3_omni.IM_END
    model.generation_config.pad_token_id = qwen3_omni.IM_END
    return model


@pytest.fixture(scope="module")
def processor(tokenizer_dir):
    return Qwen3OmniProcessor.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_processor(processor):
    return Qwen3OmniProcessor(processor.tokenizer, TINY)


@pytest.mark.parametrize("name", list(cases.processor_cases()))
def test_processor_matches_transformers(processor, name):
    """ids, masks, grids, seconds per grid identical; pixel values bit-exact (digests); log-mel <= 2e-5."""
    call, kwargs = cases.processor_cases()[name]
    out = processor(**call, **kwargs)
    prefix = f"processor/{name}/"
    keys = {k[len(prefix) :].split(".")[0] for k in REFERENCE.files if k.startswith(prefix)}
    assert keys == set(out)
    for key in keys:
        if key.startswith("pixel_values"):
            digest = hashlib.sha256(out[key].astype(np.float32).tobytes()).hexdigest()
            assert digest == str(REFERENCE[f"{prefix}{key}.sha256"]), key
        elif key == "input_features":
            assert np.abs(out[key] - REFERENCE[prefix + key]).max() <= 2e-5
        else:
            ref = REFERENCE[prefix + key]
            assert out[key].dtype == ref.dtype and np.array_equal(out[key], ref), key


def tiny_inputs(tiny_processor) -> dict:
    """Processor outputs for the tiny model: image + text, video + its audio, and a mixed batch."""
    image, other = cases.noise(12, 20, 3, seed=40), cases.smooth(16, 8)
    video = cases.noise(6, 8, 12, 3, seed=41)
    user = cases.USER
    return {
        "image + text": tiny_processor(user.format(cases.IMAGE + "What is this?"), images=[image]),
        "video with audio in video": {
            **tiny_processor(user.format(cases.VIDEO + "What happens?"), audio=[cases.clip(1.3, 42)],
                             videos=[video], fps=2.0, use_audio_in_video=True, audio_from_video_indices=[0]),
            "use_audio_in_video": True,
        },
        "batch of image, video and audio (left padding)": tiny_processor(
            [user.format(cases.IMAGE + "Describe" + cases.IMAGE),
             user.format(cases.AUDIO + cases.VIDEO + "Both?")],
            audio=[cases.clip(0.8, 43)], images=[image, other], videos=[video], fps=3.0,
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tiny_processor):
    return tiny_inputs(tiny_processor)


def as_torch(inputs: dict) -> dict:
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}


CASES = ("image + text", "video with audio in video", "batch of image, video and audio (left padding)")


@pytest.mark.parametrize("case", CASES)
def test_rope_index_matches_get_rope_index(model, inputs, case):
    x = inputs[case]
    ours, delta = rope_index(
        PositionConfig.from_hf(model.config), x["input_ids"], x["attention_mask"],
        audio_lengths=x["feature_attention_mask"].sum(1) if "input_features" in x else (),
        image_grid_thw=x.get("image_grid_thw"), video_grid_thw=x.get("video_grid_thw"),
        second_per_grids=x.get("video_second_per_grid"), use_audio_in_video=bool(x.get("use_audio_in_video")),
    )  # fmt: skip
    t = as_torch(x)
    ref, ref_delta = model.get_rope_index(
        t["input_ids"], image_grid_thw=t.get("image_grid_thw"), video_grid_thw=t.get("video_grid_thw"),
        attention_mask=t["attention_mask"], use_audio_in_video=bool(x.get("use_audio_in_video")),
        audio_seqlens=t["feature_attention_mask"].sum(1) if "input_features" in t else None,
        second_per_grids=t.get("video_second_per_grid"),
    )  # fmt: skip
    keep = x["attention_mask"].astype(bool)
    np.testing.assert_array_equal(ours[:, keep], ref.numpy()[:, keep])
    np.testing.assert_array_equal(delta, ref_delta.numpy().ravel())


@pytest.mark.parametrize("case", CASES)
def test_logits_and_greedy_tokens_match_transformers(model, inputs, case):
    """Prefill logits <= 1e-3 (deepstack added inside the scanned layers) and greedy tokens identical to
    Qwen3OmniMoeThinkerForConditionalGeneration.generate."""
    batch = as_torch(inputs[case])
    report = parity.compare(model, **batch)
    assert report.ok, str(report)
    result = parity.compare_generate(model, batch.pop("input_ids"), batch.pop("attention_mask"), NEW, **batch)
    assert result.ok, str(result)
    assert len(set(result.reference.ravel().tolist())) > 2


def test_visual_inputs_change_the_answer(model, inputs):
    """The image and its deepstack features reach the logits: other pixels, other logits."""
    config, params = parity.from_torch(model)
    x = inputs["image + text"]
    base = np.asarray(thinker.forward(params, config, x).logits)
    other = np.asarray(thinker.forward(params, config, {**x, "pixel_values": -x["pixel_values"]}).logits)
    assert np.abs(base - other).max() > 1e-2


def test_bad_inputs(model, inputs, tiny_processor, tmp_path):
    config, params = parity.from_torch(model)
    x = inputs["image + text"]
    with pytest.raises(ValueError, match="image placeholder count mismatch: input_ids have 15 .* give 30"):
        twice = {k: np.tile(x[k], (2, 1)) for k in ("pixel_values", "image_grid_thw")}
        thinker.prepare_prompt(params, config, {**x, **twice})
    with pytest.raises(ValueError, match="multiples of spatial_merge_size 2"):
        thinker.prepare_prompt(params, config, {**x, "image_grid_thw": np.array([[1, 5, 12]])})
    v = inputs["video with audio in video"]
    silent = {**v, "input_ids": np.where(v["input_ids"] == 151669, 151643, v["input_ids"])}
    with pytest.raises(ValueError, match="use_audio_in_video=True needs an audio track for every video"):
        thinker.prepare_prompt(params, config, silent)
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> placeholder.* for 2 image"):
        tiny_processor(cases.USER.format(cases.IMAGE), images=[cases.smooth(8, 8)] * 2)
    with pytest.raises(ValueError, match="non-empty frame array"):
        tiny_processor(cases.USER.format(cases.VIDEO), videos=[np.zeros((0, 8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="non-empty"):
        tiny_processor(cases.USER.format(cases.IMAGE), images=[np.zeros((0, 0, 3), np.uint8)])
    with pytest.raises(ValueError, match="frame array: pass its sound track"):
        tiny_processor(
            cases.USER.format(cases.VIDEO), videos=[cases.noise(2, 8, 8, 3)], use_audio_in_video=True
        )
    import av

    path = tmp_path / "silent.mov"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=2)
        stream.width, stream.height, stream.pix_fmt = 8, 8, "rgb24"
        for frame in cases.noise(4, 8, 8, 3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    with pytest.raises(ValueError, match="video 0 .* has no audio track"):
        tiny_processor(cases.USER.format(cases.VIDEO), videos=[path], use_audio_in_video=True)


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    """The tiny thinker saved with its processor files (the tiny tower's patch size, small pixel ranges)."""
    folder = tmp_path_factory.mktemp("vision") / "thinker"
    model.save_pretrained(folder)
    save_tokenizer_files(folder, "qwen3_omni_moe")
    processor_config = json.loads((folder / "processor_config.json").read_text())
    for key in ("image_processor", "video_processor"):
        processor_config[key].update(patch_size=2, min_pixels=64, max_pixels=1024)
    processor_config["video_size"] = [64, 256]
    (folder / "processor_config.json").write_text(json.dumps(processor_config))
    (folder / "generation_config.json").write_text(json.dumps({"pad_token_id": qwen3_omni.IM_END}))
    return folder


def test_pipeline_and_cli_take_images_and_video(model, folder, tmp_path, capsys):
    """A saved thinker with its processor files loads; prepare/generate with an image and with a video file
    (its sound track heard) equal transformers' greedy tokens, streamed too; the CLI runs with --image /
    --video."""
    import av
    from PIL import Image

    from omni_jax.cli import generate as cli

    pipe = qwen3_omni.load(folder)
    Image.fromarray(cases.smooth(12, 20)).save(tmp_path / "a.png")
    path = tmp_path / "v.mov"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=4)
        stream.width, stream.height, stream.pix_fmt = 12, 8, "rgb24"
        sound = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        for frame in cases.noise(8, 8, 12, 3, seed=4):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
        chunk = av.AudioFrame.from_ndarray((cases.clip(2.0, 5) * 3e5).astype(np.int16)[None], format="s16",
                                           layout="mono")  # fmt: skip
        chunk.sample_rate = 16000
        out.mux(sound.encode(chunk))
        out.mux(sound.encode())
    for kwargs in ({"images": [tmp_path / "a.png"]}, {"videos": [path], "use_audio_in_video": True}):
        x = pipe.prepare(prompts=["What is it?"], **kwargs)
        assert x["input_ids"].shape[0] == 1 and ("input_features" in x) == ("videos" in kwargs)
        batch = as_torch(x)
        with torch.no_grad():
            ref = model.generate(**batch, max_new_tokens=NEW, do_sample=False)[:, x["input_ids"].shape[1] :]
        ours = pipe.generate(x, max_new_tokens=NEW)
        np.testing.assert_array_equal(ours, ref.numpy()[:, : ours.shape[1]])
        streamed = np.stack(list(pipe.stream(x, max_new_tokens=NEW)), 1)
        np.testing.assert_array_equal(streamed[:, : ours.shape[1]], ours)
    args = ["--model", str(folder), "--video", str(path), "--use-audio-in-video",
            "--image", str(tmp_path / "a.png"), "--max-new-tokens", "3", "--json"]  # fmt: skip
    assert cli.main(args) == 0
    assert np.shape(json.loads(capsys.readouterr().out)["ids"]) == (1, 3)


def test_parity_cli_compares_the_vision_stages(folder, tmp_path, capsys):
    """`python -m omni_jax.parity --image`: grids, pixel values (against the image processor that runs
    here), the vision encoder and its deepstack output, fusion, positions, logits and greedy tokens."""
    from PIL import Image

    from omni_jax.cli import parity as cli

    Image.fromarray(cases.smooth(12, 20)).save(tmp_path / "a.png")  # the shapes of the pipeline test's
    argv = ["--model", str(folder), "--image", str(tmp_path / "a.png"), "--prompt", "What is it?"]
    assert cli.main([*argv, "--max-new-tokens", str(NEW)]) == 0
    out = capsys.readouterr().out
    for stage in ("prompt ids + masks", "image grids", "pixel_values (vs ", "vision encoder (images)",
                  "vision deepstack, block 0 (images)", "fusion", "MRoPE positions", "prefill logits",
                  "greedy tokens ("):  # fmt: skip
        assert stage in out, stage
    assert "60x24" in out and "all stages within tolerance" in out


def test_parity_cli_usage_errors(folder, tmp_path, capsys):
    """Exit 2 with the reason, before transformers loads: no input, rows that do not pair up, an audio-only
    family given an image, a missing or unreadable image or video, a silent video to be heard."""
    import av
    from PIL import Image

    from omni_jax.cli import parity as cli

    image, text = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(cases.smooth(8, 8)).save(image)
    text.write_text("not an image")
    silent = tmp_path / "silent.mov"
    with av.open(str(silent), "w") as out:
        stream = out.add_stream("png", rate=2)
        stream.width, stream.height, stream.pix_fmt = 8, 8, "rgb24"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(cases.smooth(8, 8), format="rgb24")))
        out.mux(stream.encode())
    for kind in ("audioflamingo3", "whisper"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "config.json").write_text(json.dumps({"model_type": kind}))
    model, af3 = ["--model", str(folder)], ["--model", str(tmp_path / "audioflamingo3")]
    cases_ = {
        "give at least one": model,
        "one file of each kind given: got 2 --image, 1 --video": [
            *model, "--image", str(image), "--image", str(image), "--video", str(silent)],
        "audioflamingo3 takes no images": [*af3, "--image", str(image)],
        "whisper takes no images": ["--model", str(tmp_path / "whisper"), "--video", str(silent)],
        "--image .*missing.png.* does not exist": [*model, "--image", str(tmp_path / "missing.png")],
        "--image .*b.png.*cannot identify": [*model, "--image", str(text)],
        "--video .*missing.mov.* does not exist": [*model, "--video", str(tmp_path / "missing.mov")],
        "--video .*silent.mov.* no sound track": [*model, "--video", str(silent), "--use-audio-in-video"],
        "--use-audio-in-video needs --video": [*model, "--image", str(image), "--use-audio-in-video"],
        "--fps must be positive": [*model, "--video", str(silent), "--fps", "0"],
    }  # fmt: skip
    for message, argv in cases_.items():
        assert cli.main(argv) == 2, message
        assert re.search(message, capsys.readouterr().err), message
