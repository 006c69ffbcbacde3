"""Code2Wav vs transformers' Qwen3OmniMoeCode2Wav: one-shot, chunked and streaming decode, key map, errors."""

import functools
import math

import jax
import numpy as np
import pytest
import soundfile as sf

from omni_jax import parity
from omni_jax.audio.io import save_audio
from omni_jax.convert.keymap import ConversionError, hf_to_params, params_to_hf
from omni_jax.models import code2wav as c2w
from omni_jax.nn.layers import sin_squared
from omni_jax.nn.params import flatten_paths, is_spec
from omni_jax.testing.checkpoints import tame_code2wav_init

torch = pytest.importorskip("torch")

FRAMES = (1, 2, 25, 300, 301, 700)
BATCH = {25: 2}  # frames -> batch size (1 otherwise)
TINY = dict(
    codebook_size=64,
    num_quantizers=4,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA kept alive
    sliding_window=8,
    decoder_dim=64,
    upsample_rates=[8, 5, 4, 3],  # the real rates: 1920 samples per frame
    upsampling_ratios=[2, 2],
)


def _hf_config(**kw):
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeCode2WavConfig

    return Qwen3OmniMoeCode2WavConfig(**kw)


@pytest.fixture(scope="module")
def tiny():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeCode2Wav

    torch.manual_seed(0)
    module = Qwen3OmniMoeCode2Wav(_hf_config(**TINY)).eval()
    tame_code2wav_init(module)
    config = c2w.Config.from_hf(module.config)
    params = hf_to_params(module.state_dict(), c2w.hf_rules(config), c2w.param_specs(config))
    return module, config, params


def _codes(frames: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed + frames)
    return rng.integers(0, TINY["codebook_size"], (BATCH.get(frames, 1), TINY["num_quantizers"], frames))


@pytest.fixture(scope="module")
def decoded(tiny):
    """frames -> (transformers forward, ours), computed once."""
    module, config, params = tiny

    @functools.cache
    def run(frames):
        codes = _codes(frames)
        with torch.no_grad():
            reference = module(torch.from_numpy(codes)).numpy()[:, 0]
        return reference, np.asarray(c2w.code2wav(params, config, codes))

    return run


def _snr_db(reference, ours):
    return 10 * math.log10(
        np.sum(np.square(reference, dtype=np.float64)) / np.sum(np.square(reference - ours))
    )


@pytest.mark.parametrize("frames", FRAMES)
def test_forward_parity(decoded, frames):
    reference, ours = decoded(frames)
    assert reference.shape == ours.shape == (BATCH.get(frames, 1), 1920 * frames - 555)
    assert np.abs(reference - ours).max() <= parity.MODULE_ATOL
    assert _snr_db(reference, ours) >= 80
    assert np.abs(ours).max() <= 1.0


def test_cpu_layout_matches_transformers(tiny, decoded):
    """The CPU layout (unrolled packed pre-transformer, polyphase transposed convs) matches transformers."""
    _, config, params = tiny
    reference, _ = decoded(FRAMES[0])
    ours = np.asarray(c2w.code2wav(c2w.cpu_layout(params, config), config, _codes(FRAMES[0])))
    assert np.abs(reference - ours).max() <= parity.MODULE_ATOL


def test_output_length():
    for frames in (1, 2, 6, 300, 701):
        assert c2w.output_length(c2w.Config(), frames) == 1920 * frames - 555
    assert c2w.Config().total_upsample == 1920


def test_parity_compare(tiny):
    module, _, _ = tiny
    report = parity.compare(module, torch.from_numpy(_codes(25)))
    assert report.ok, str(report)


def test_chunked_decode_matches_transformers(tiny):
    module, config, params = tiny
    codes = _codes(700)
    with torch.no_grad():
        reference = module.chunked_decode(torch.from_numpy(codes)).numpy()[:, 0]
    ours = np.asarray(c2w.chunked_decode(params, config, codes))
    assert reference.shape == ours.shape == (1, 1920 * 700 - 3 * 555)
    assert np.abs(reference - ours).max() <= parity.MODULE_ATOL
    assert _snr_db(reference, ours) >= 80


@pytest.mark.parametrize("step,frames", [(1, 25), (3, 25), (25, 300)])
def test_streaming_equals_one_shot(tiny, decoded, step, frames):
    _, config, params = tiny
    codes = _codes(frames)
    state = c2w.stream_init(config, batch=codes.shape[0])
    pieces = []
    for start in range(0, frames, step):
        chunk = codes[..., start : start + step]
        state, samples = c2w.stream_step(params, config, state, chunk)
        expected = c2w.output_length(config, chunk.shape[-1]) if start == 0 else 1920 * chunk.shape[-1]
        assert samples.shape == (codes.shape[0], expected)
        pieces.append(np.asarray(samples))
    streamed = np.concatenate(pieces, axis=-1)
    _, one_shot = decoded(frames)
    assert streamed.shape == one_shot.shape
    # float32 rounding differs with the step shapes and the decoder amplifies it (~2e-6 here)
    np.testing.assert_allclose(streamed, one_shot, rtol=0, atol=1e-5)
    assert int(state["pos"]) == frames


def test_streaming_compiles_two_step_shapes_only(tiny):
    """The first step and the steady state compile; after them, new codes and more steps compile nothing."""
    from torch_fixtures import count_compilations

    _, config, params = tiny

    def run(codes):
        state = c2w.stream_init(config, batch=codes.shape[0])
        for start in range(0, codes.shape[-1], 3):
            state, samples = c2w.stream_step(params, config, state, codes[..., start : start + 3])
        return np.asarray(samples)

    run(_codes(25))  # the shapes test_streaming_equals_one_shot[3-25] compiled already
    shape = (BATCH[25], TINY["num_quantizers"], 12)
    other = np.random.default_rng(5).integers(0, TINY["codebook_size"], shape)
    with count_compilations() as compiles:
        run(other)
    assert compiles == []


@pytest.mark.parametrize(
    "codes,match",
    [
        (np.full((1, 4, 3), 64), r"\[0, 64\)"),
        (np.full((1, 4, 3), -1), r"\[0, 64\)"),
        (np.zeros((1, 3, 5), np.int64), "expected 4 quantizers"),
        (np.zeros((1, 4, 0), np.int64), "empty"),
        (np.zeros((4, 5), np.int64), r"\(batch, quantizers, frames\)"),
        (np.zeros((1, 4, 5), np.float32), "integers"),
    ],
)
def test_bad_codes(tiny, codes, match):
    _, config, params = tiny
    with pytest.raises(ValueError, match=match):
        c2w.code2wav(params, config, codes)
    with pytest.raises(ValueError, match=match):
        c2w.chunked_decode(params, config, codes)
    with pytest.raises(ValueError, match=match):
        c2w.stream_step(params, config, c2w.stream_init(config), codes)


def test_stream_batch_mismatch(tiny):
    _, config, params = tiny
    with pytest.raises(ValueError, match="batch"):
        c2w.stream_step(params, config, c2w.stream_init(config, batch=2), _codes(1))


def test_key_map_round_trip_with_checkpoint_prefix(tiny):
    module, config, params = tiny
    specs = c2w.param_specs(config)
    rules = c2w.hf_rules(config, prefix="code2wav.")
    state = {f"code2wav.{k}": v.numpy() for k, v in module.state_dict().items()}
    hf = params_to_hf(params, rules, specs)
    assert hf.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(hf[key], value, err_msg=key)
    back = hf_to_params(state, rules, specs)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    del state["code2wav.decoder.2.block.1.conv.weight"]
    with pytest.raises(ConversionError, match="decoder/blocks/1/tconv/kernel"):
        hf_to_params(state, rules, specs)


def test_config_from_hf():
    assert c2w.Config.from_hf(_hf_config()) == c2w.Config()
    tiny = _hf_config(**TINY)
    assert c2w.Config.from_hf({"code2wav_config": tiny.to_dict()}) == c2w.Config.from_hf(tiny)


def test_released_parameter_count():
    shapes = [s.shape for _, s in flatten_paths(c2w.param_specs(c2w.Config()), is_leaf=is_spec)]
    assert sum(math.prod(s) for s in shapes) == 216_016_577


def test_save_audio(decoded, tmp_path):
    _, ours = decoded(2)
    path = save_audio(tmp_path / "code2wav.wav", ours[0], c2w.SAMPLE_RATE)
    info = sf.info(str(path))
    assert (info.samplerate, info.frames) == (24000, 1920 * 2 - 555)


def test_sin_squared_accuracy():
    x = np.linspace(-1e4, 1e4, 2_000_001, dtype=np.float32)
    exact = np.sin(x.astype(np.float64)) ** 2
    assert np.abs(np.asarray(sin_squared(x)) - exact).max() <= 2e-7
