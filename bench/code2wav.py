"""Code2Wav on CPU: JAX vs transformers in one process, released-size config with random weights.

Rows: ms per code and real-time factor of a one-shot decode, first-packet latency of one streamed frame, and
the per-code cost of streaming one and four frames per step (four: against JAX's own one-shot). No GPU
rows: none is lent to this task.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import emit, median_time, parser, row  # noqa: E402

from omni_jax.convert.keymap import params_to_hf  # noqa: E402
from omni_jax.models import code2wav as c2w  # noqa: E402
from omni_jax.nn.params import init_params  # noqa: E402


def torch_module(params, config, specs):
    """transformers' Qwen3OmniMoeCode2Wav (released config) holding the same weights as `params`."""
    import torch
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeCode2WavConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeCode2Wav

    module = Qwen3OmniMoeCode2Wav(Qwen3OmniMoeCode2WavConfig()).eval()
    hf = params_to_hf(params, c2w.hf_rules(config), specs)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in hf.items()}, strict=True)
    return module


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--frames", type=int, default=25, help="codec frames (80 ms each) per one-shot decode")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import torch

    torch.set_num_threads(2)
    config = c2w.Config()
    specs = c2w.param_specs(config)
    params = init_params(specs, jax.random.key(0))
    module = torch_module(params, config, specs)
    frames, repeats = args.frames, args.repeats
    codes = np.random.default_rng(0).integers(0, config.codebook_size, (1, config.num_quantizers, frames))
    codes_t = torch.from_numpy(codes)

    def timed(fn):  # ms
        return 1e3 * median_time(fn, warmup=1, repeats=repeats)

    with torch.inference_mode():
        t_torch, t_torch_1 = timed(lambda: module(codes_t)), timed(lambda: module(codes_t[..., :1]))
    t_jax = timed(lambda: c2w.code2wav(params, config, codes).block_until_ready())
    start = c2w.stream_init(config)
    t_first = timed(lambda: c2w.stream_step(params, config, start, codes[..., :1])[1].block_until_ready())
    state, _ = c2w.stream_step(params, config, start, codes[..., :1])
    t_step = timed(lambda: c2w.stream_step(params, config, state, codes[..., 1:2])[1].block_until_ready())
    t_step4 = timed(lambda: c2w.stream_step(params, config, state, codes[..., 1:5])[1].block_until_ready())
    audio_ms = 1e3 * frames * config.total_upsample / c2w.SAMPLE_RATE
    rows = [
        row(f"one-shot, {frames} frames", t_jax / frames, t_torch / frames, "ms/code"),
        row(f"real-time factor, {frames} frames", t_jax / audio_ms, t_torch / audio_ms, "RTF"),
        row("first packet, 1 frame (torch: forward 1 frame)", t_first, t_torch_1, "ms"),
        row("stream 1 frame/step (torch: one-shot)", t_step, t_torch / frames, "ms/code"),
        row("stream 4 frames/step (reference: JAX one-shot)", t_step4 / 4, t_jax / frames, "ms/code"),
    ]
    emit(rows, args.json)


if __name__ == "__main__":
    main()
