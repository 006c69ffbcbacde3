"""Whisper-style encoder against transformers' WhisperEncoder, Qwen2AudioEncoder and AudioFlamingo3Encoder."""

import numpy as np
import pytest
import torch
from torch_fixtures import TINY_ENCODER
from transformers import AudioFlamingo3EncoderConfig, Qwen2AudioEncoderConfig, WhisperConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.audioflamingo3.modeling_audioflamingo3 import AudioFlamingo3Encoder
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from omni_jax import parity
from omni_jax.convert.keymap import params_to_hf
from omni_jax.models import whisper_encoder as we
from omni_jax.parity.reference import randomize

MEL, POSITIONS = 8, 30
FRAMES = 2 * POSITIONS
TINY = dict(num_mel_bins=MEL, **TINY_ENCODER, max_source_positions=POSITIONS)
CLASSES = {
    "whisper": (WhisperEncoder, WhisperConfig),
    "qwen2_audio": (Qwen2AudioEncoder, Qwen2AudioEncoderConfig),
    "af3": (AudioFlamingo3Encoder, AudioFlamingo3EncoderConfig),
}


@pytest.fixture(scope="module", params=list(CLASSES))
def flavour(request):
    cls, config_cls = CLASSES[request.param]
    torch.manual_seed(0)
    return request.param, randomize(cls(config_cls(**TINY)))


@pytest.fixture(scope="module")
def af3():
    torch.manual_seed(0)
    return randomize(AudioFlamingo3Encoder(AudioFlamingo3EncoderConfig(**TINY)))


def features(windows: int, seed: int = 7) -> torch.Tensor:
    return torch.randn(windows, MEL, FRAMES, generator=torch.Generator().manual_seed(seed))


def frame_mask(lengths) -> torch.Tensor:
    return (torch.arange(FRAMES)[None] < torch.tensor(lengths)[:, None]).long()


def test_parity_unmasked(flavour):
    name, module = flavour
    kwargs = {"input_features_mask": frame_mask([FRAMES] * 3)} if name == "af3" else {}  # AF3 requires one
    report = parity.compare(module, features(3), **kwargs)
    assert report.ok, report


# AF3: one 30-s window (full or partial) and several windows of one audio (the last partial, one nearly empty)
@pytest.mark.parametrize("lengths", [[FRAMES], [37], [FRAMES, FRAMES, 37], [FRAMES, 1, 2]])
def test_af3_windows(af3, lengths):
    report = parity.compare(af3, features(len(lengths)), input_features_mask=frame_mask(lengths))
    assert report.ok, report


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_qwen2_audio_padding_mask(attn):
    """Qwen2AudioModel builds the 4-D key mask itself (bool for sdpa, additive for eager)."""
    torch.manual_seed(0)
    module = randomize(Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**TINY, attn_implementation=attn)))
    conv = we.conv_lengths(torch.tensor([FRAMES, 37, 1]))
    keys = (torch.arange(POSITIONS)[None] < conv[:, None]).long()
    mask = create_bidirectional_mask(
        config=module.config, inputs_embeds=torch.zeros(3, POSITIONS, 1), attention_mask=keys
    )
    report = parity.compare(module, features(3), attention_mask=mask)
    assert report.ok, report


def test_mask_changes_the_output(af3):
    """The key mask is live: the same features with a shorter mask give different valid outputs."""
    config, params = parity.from_torch(af3)
    feats = features(1).numpy()
    full, _ = we.encode(params, config, feats, frame_mask([FRAMES]).numpy())
    short, valid = we.encode(params, config, feats, frame_mask([40]).numpy())
    assert np.asarray(valid).sum() == 10
    assert np.abs(np.asarray(full - short))[0, :10].max() > 1e-3


def test_output_lengths_match_transformers(flavour):
    name, module = flavour
    config, params = parity.from_torch(module)
    lengths = [FRAMES, 37, 2, 1]
    _, valid = we.encode(params, config, features(4).numpy(), frame_mask(lengths).numpy())
    if name == "whisper":
        expected = we.conv_lengths(np.array(lengths))
    else:
        expected = module._get_feat_extract_output_lengths(torch.tensor(lengths))[1].numpy()
    np.testing.assert_array_equal(np.asarray(valid).sum(-1), expected)


def test_weights_round_trip(flavour):
    _, module = flavour
    config, params = parity.from_torch(module)
    back = params_to_hf(params, we.hf_rules(config), we.param_specs(config))
    state = module.state_dict()
    assert back.keys() == state.keys()
    for key, value in back.items():
        np.testing.assert_array_equal(value, state[key].numpy(), err_msg=key)


def test_switches():
    switches = {
        name: (c.pool, c.mask_keys, c.cast_input)
        for name, (_, config_cls) in CLASSES.items()
        for c in [we.WhisperEncoderConfig.from_hf(config_cls(**TINY))]
    }
    assert switches == {
        "whisper": (False, False, False),
        "qwen2_audio": (True, True, True),
        "af3": (True, True, False),
    }


def test_bad_inputs(af3):
    config, params = parity.from_torch(af3)
    feats, mask = features(2).numpy(), frame_mask([FRAMES, 20]).numpy()
    with pytest.raises(ValueError, match="mel bins"):
        we.encode(params, config, np.zeros((2, MEL + 1, FRAMES), np.float32), mask)
    with pytest.raises(ValueError, match=r"exactly 60 \(2 \* max_source_positions\)"):
        we.encode(params, config, feats[:, :, :50], mask[:, :50])
    with pytest.raises(ValueError, match="empty audio"):
        we.encode(params, config, feats, frame_mask([FRAMES, 0]).numpy())
    with pytest.raises(ValueError, match="does not match features"):
        we.encode(params, config, feats, mask[:1])
    with pytest.raises(ValueError, match="dtype"):
        we.encode(params, config, feats.astype(np.float16), mask)
    with pytest.raises(ValueError, match="model_type"):
        we.WhisperEncoderConfig.from_hf({"model_type": "qwen3_omni_moe_audio_encoder"})


@pytest.mark.parametrize("block", [7, 16, 64])
def test_blocked_attention_matches_attention(block):
    """The encoders' blocked attention equals the plain primitive (ragged last block, key mask, odd t)."""
    from omni_jax.nn.attention import attention, blocked_attention

    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 37, 3, 8)).astype(np.float32) for _ in range(3))
    keys = np.arange(37)[None] < np.array([[37], [5]])
    want = attention(q, k, v, mask=keys[:, None, None, :], scale=0.3)
    np.testing.assert_allclose(
        blocked_attention(q, k, v, key_mask=keys, scale=0.3, block=block), want, atol=1e-6
    )
    np.testing.assert_allclose(blocked_attention(q, k, v, block=block), attention(q, k, v), atol=1e-6)
