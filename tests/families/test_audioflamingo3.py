"""AudioFlamingo3 end to end against transformers' AudioFlamingo3ForConditionalGeneration, on a tiny random
checkpoint (configs/tiny-audioflamingo3.json, real 128-bin / 30-s windows, the offline tiny tokenizer)."""

from importlib import resources

import numpy as np
import pytest

from omni_jax.audio import load_audio
from omni_jax.convert import run as convert
from omni_jax.demo import tiny_checkpoint
from omni_jax.families.audioflamingo3 import system as af3
from omni_jax.nn.fusion import place_audio
from omni_jax.parity import LOGITS_ATOL, compare, compare_generate
from omni_jax.pipelines import load_pipeline

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SR = 16000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(HF folder, transformers model, our pipeline loaded from the HF folder)."""
    folder = tiny_checkpoint(tmp_path_factory.mktemp("af3") / "hf")
    model = transformers.AudioFlamingo3ForConditionalGeneration.from_pretrained(folder).eval()
    return folder, model, load_pipeline(folder)


def clips(noise_seconds: float) -> list[np.ndarray]:
    speech = load_audio(resources.files("omni_jax") / "assets" / "speech.wav")
    noise = (0.1 * np.random.default_rng(0).standard_normal(int(noise_seconds * SR))).astype(np.float32)
    return [speech, noise]


@pytest.fixture(scope="module")
def batch(tiny):
    """Speech (5 s) and noise (2 s): different token counts, so row 1 is left padded."""
    inputs = tiny[2].prepare(clips(2), [None, "What do you hear?"])
    assert not inputs["attention_mask"][1].all()
    return inputs


@pytest.fixture(scope="module")
def long_batch(tiny):
    """Speech (5 s, one window) and noise (35 s, two windows): row 0 is left padded."""
    inputs = tiny[2].prepare(clips(35), [None, "What do you hear?"])
    assert inputs["input_features"].shape[0] == 3 and not inputs["attention_mask"][0].all()
    return inputs


def as_torch(inputs):
    return {k: torch.from_numpy(np.array(v)) for k, v in inputs.items()}


def test_prefill_logits_match_transformers(tiny, batch):
    report = compare(tiny[1], **as_torch(batch))
    assert report.ok and report.max_abs_diff <= LOGITS_ATOL, report
    assert report.shape == (*batch["input_ids"].shape, 151672)


def test_greedy_generation_is_token_identical(tiny, long_batch):
    t = as_torch(long_batch)
    report = compare_generate(
        tiny[1], t["input_ids"], t["attention_mask"], 24,
        input_features=t["input_features"], input_features_mask=t["input_features_mask"],
    )  # fmt: skip
    assert report.ok, report
    assert report.ours.shape == (2, 24)


def test_pipeline_stream_and_converted_folder_give_the_same_tokens(tiny, batch, tmp_path):
    folder, _, pipe = tiny
    tokens = pipe.generate(batch, max_new_tokens=6)
    streamed = np.stack(list(pipe.stream(batch, max_new_tokens=6)), 1)
    np.testing.assert_array_equal(streamed, tokens)
    convert.to_jax(folder, tmp_path / "jax")
    converted = load_pipeline(tmp_path / "jax")
    np.testing.assert_array_equal(converted.generate(batch, max_new_tokens=6), tokens)
    assert all(isinstance(t, str) and t for t in converted.decode(tokens))


def test_placement_follows_windows_and_rows(tiny):
    """Static-shape placement equals transformers' masked_scatter, invalid frames skipped."""
    rng = np.random.default_rng(0)
    text, audio = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 3), (3, 4, 3)))
    is_audio = np.array([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    valid = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], bool)
    expected = torch.from_numpy(text).masked_scatter(
        torch.from_numpy(is_audio)[..., None].expand(2, 5, 3), torch.from_numpy(audio[valid])
    )
    ours = place_audio(text, is_audio, audio, valid)
    np.testing.assert_array_equal(np.asarray(ours), expected.numpy())


def test_bad_inputs_raise_clear_errors(tiny, long_batch):
    _, _, pipe = tiny
    params, config = pipe.params, pipe.config
    ids, feats, mask = (long_batch[k] for k in ("input_ids", "input_features", "input_features_mask"))
    clip = np.zeros(SR, np.float32)
    text_only = np.where(ids == config.audio_token_id, 5, ids)
    with pytest.raises(ValueError, match="no audio token"):
        af3.embed_inputs(params, config, text_only, feats, mask)
    with pytest.raises(ValueError, match="2 <sound> placeholder"):
        pipe.prepare([clip], ["<sound>Describe it."])  # two <sound> for one audio
    with pytest.raises(ValueError, match="the text has"):
        af3.embed_inputs(params, config, ids[:1], feats, mask)  # audio of 2 samples, 1 prompt
    with pytest.raises(ValueError, match="whole windows"):
        af3.embed_inputs(params, config, ids, feats[[1, 2, 0]], mask[[1, 2, 0]])  # totals agree, rows do not
    with pytest.raises(ValueError, match="prompt.* but 1 audio"):
        pipe.processor(["<sound>a", "<sound>b"], [clip])
    with pytest.raises(ValueError, match="past the limit of 600 s"):
        pipe.prepare([np.zeros(601 * SR, np.float32)])
    with pytest.raises(ValueError, match="input_features_mask is required"):
        af3.embed_inputs(params, config, ids, feats)


def test_no_recompilation_inside_a_bucket(tiny, batch):
    """After warm-up, other clip lengths and prompts in the same prompt-length bucket compile nothing."""
    from torch_fixtures import count_compilations

    pipe = tiny[2]
    pipe.generate(batch, max_new_tokens=4)
    speech, _ = clips(0)
    noise = (0.1 * np.random.default_rng(1).standard_normal(40_000)).astype(np.float32)
    other = pipe.prepare([speech[:70_000], noise], ["Describe it.", "What is this sound?"])
    assert other["input_ids"].shape[1] != batch["input_ids"].shape[1]
    with count_compilations() as compiles:
        pipe.generate(other, max_new_tokens=4)
    assert compiles == []
