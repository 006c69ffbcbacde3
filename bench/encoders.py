"""Audio encoders, JAX jit vs transformers eager in one process: real Whisper tiny.en on 1 and 8 clips of 30 s
(espeak-ng speech), the Qwen3-Omni AuT encoder at a small config (two audios, 30 s and 17 s), and the
release-size AuT (d_model 1280, 32 layers, windows of 104 tokens; random weights) on one clip of 2 s, 5 s,
10 s, 30 s and 5 min, JAX and torch calls interleaved.

    python bench/encoders.py [--json] [--aut-seconds 2 5 10 30 300]"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import emit, median_time, paired_median_times, parser, row  # noqa: E402

from omni_jax import parity  # noqa: E402
from omni_jax.audio import load_audio, log_mel  # noqa: E402
from omni_jax.convert import ctranslate2  # noqa: E402
from omni_jax.models import aut_encoder, whisper_encoder  # noqa: E402

SPEECH = os.path.join(os.path.dirname(__file__), "..", "omni_jax", "assets", "speech.wav")
AUT_SMALL = dict(
    num_mel_bins=128,
    d_model=256,
    encoder_layers=4,
    encoder_attention_heads=4,
    encoder_ffn_dim=1024,
    downsample_hidden_size=64,
    output_dim=512,
    n_window=50,
    n_window_infer=800,
)
AUT_RELEASE = dict(
    AUT_SMALL, d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120
)
AUT_RELEASE.update(downsample_hidden_size=480, output_dim=2048)


def whisper_rows(torch) -> list[dict]:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config, state = ctranslate2.load_whisper(ctranslate2.whisper_tiny_dir())
    module = WhisperEncoder(WhisperConfig(**config)).eval()
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    module.load_state_dict({k: torch.from_numpy(v) for k, v in encoder.items()})
    cfg, params = parity.from_torch(module)
    params = jax.device_put(params)
    clip, _ = log_mel([load_audio(SPEECH)], num_mel_bins=80)
    rows = []
    for n in (1, 8):
        feats = np.repeat(np.asarray(clip), n, axis=0)
        device_feats, torch_feats = jnp.asarray(feats), torch.from_numpy(feats)

        def run_torch(x=torch_feats):
            with torch.no_grad():
                module(x)

        def run_jax(x=device_feats):
            whisper_encoder.forward(params, cfg, x).block_until_ready()

        t_jax, t_torch = median_time(run_jax, repeats=5), median_time(run_torch, repeats=5)
        rows.append(row(f"whisper-tiny.en encoder, {n} x 30 s", t_jax * 1e3, t_torch * 1e3, "ms"))
    return rows


def aut_rows(torch) -> list[dict]:
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    torch.manual_seed(0)
    module = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**AUT_SMALL)).eval()
    cfg, params = parity.from_torch(module)
    params = jax.device_put(params)
    lengths = np.array([3000, 1700])
    feats = np.random.default_rng(0).normal(size=(2, 128, 3000)).astype(np.float32)
    flat = torch.from_numpy(np.concatenate([feats[i, :, :n] for i, n in enumerate(lengths)], axis=1))

    def run_torch():
        with torch.no_grad():
            module(flat, torch.from_numpy(lengths))

    def run_jax():
        aut_encoder.encode(params, cfg, feats, lengths)[0].block_until_ready()

    t_jax, t_torch = median_time(run_jax, repeats=7), median_time(run_torch, repeats=7)
    return [row("AuT small (d 256, 4 layers), 30 s + 17 s", t_jax * 1e3, t_torch * 1e3, "ms")]


def aut_release_rows(torch, seconds: list[float]) -> list[dict]:
    """One clip per length through the release-size encoder; long clips get fewer repeats (minutes each)."""
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    torch.manual_seed(0)
    module = Qwen3OmniMoeAudioEncoder(Qwen3OmniMoeAudioEncoderConfig(**AUT_RELEASE)).eval()
    cfg, params = parity.from_torch(module)
    layout = aut_encoder.cpu_layout(jax.device_put(params))  # as the Qwen3-Omni pipeline encodes on CPU
    rows = []
    for s in seconds:
        frames = int(s * 100)
        feats = np.random.default_rng(0).normal(size=(1, 128, frames)).astype(np.float32)
        flat, lengths = torch.from_numpy(feats[0]), np.array([frames])

        def run_torch(flat=flat, lengths=lengths):
            with torch.no_grad():
                module(flat, torch.from_numpy(lengths))

        def run_jax(feats=feats, lengths=lengths):
            aut_encoder.encode(layout, cfg, feats, lengths)[0].block_until_ready()

        repeats = 5 if s <= 10 else 3 if s <= 30 else 1
        t_jax, t_torch = paired_median_times((run_jax, run_torch), repeats=repeats)
        tokens = int(aut_encoder.audio_token_count(frames))
        rows.append(
            row(
                f"AuT release (d 1280, 32 layers), {s:g} s ({tokens} tokens)",
                t_jax * 1e3,
                t_torch * 1e3,
                "ms",
            )
        )
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--aut-seconds", type=float, nargs="*", default=[2, 5, 10, 30, 300])
    args = p.parse_args()
    import torch

    torch.set_num_threads(2)
    emit(whisper_rows(torch) + aut_rows(torch) + aut_release_rows(torch, args.aut_seconds), args.json)


if __name__ == "__main__":
    main()
