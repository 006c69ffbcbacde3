"""Code2Wav on CPU: JAX vs transformers in one process, released-size config with random weights.

Rows: ms per code and real-time factor of a one-shot decode, first-packet latency of one streamed frame, and
the per-code cost of a whole stream of the same frames fed 1, 4 and 25 frames per step, against the one-shot
decode (torch's for 1 frame per step, JAX's own for 4 and 25: the issue's goal is within 1.25x of it). All
timings are interleaved (one call of each per round, `paired_median_times`) so that load on a shared box hits
every row alike; `uptime`'s load average is printed to stderr. JAX runs the CPU layout
(`code2wav.cpu_layout`), as the Qwen3-Omni pipeline does. No GPU rows: none is lent to this task.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import emit, paired_median_times, parser, row  # noqa: E402

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


def streamed(params, config, codes, per_step: int) -> np.ndarray:
    """The whole stream of `codes` b q n fed `per_step` frames per step -> the samples of every step."""
    state, out = c2w.stream_init(config, codes.shape[0]), []
    for start in range(0, codes.shape[-1], per_step):
        state, wav = c2w.stream_step(params, config, state, codes[..., start : start + per_step])
        out.append(wav)
    return jax.block_until_ready(out)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--frames", type=int, default=50, help="codec frames (80 ms each) per decode / stream")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import torch

    torch.set_num_threads(2)
    print("load:", os.getloadavg(), file=sys.stderr)
    config = c2w.Config()
    specs = c2w.param_specs(config)
    params = init_params(specs, jax.random.key(0))
    module = torch_module(params, config, specs)
    params = c2w.cpu_layout(params, config)  # the CPU layout the pipeline decodes with
    frames = args.frames
    codes = np.random.default_rng(0).integers(0, config.codebook_size, (1, config.num_quantizers, frames))
    codes_t = torch.from_numpy(codes)
    start = c2w.stream_init(config)
    state, _ = c2w.stream_step(params, config, start, codes[..., :1])

    def one_step():  # a steady-state 1-frame step (a whole 1-frame stream would take `frames` of them)
        return c2w.stream_step(params, config, state, codes[..., 1:2])[1].block_until_ready()

    with torch.inference_mode():
        fns = (
            lambda: module(codes_t),
            lambda: module(codes_t[..., :1]),
            lambda: c2w.code2wav(params, config, codes).block_until_ready(),
            lambda: c2w.stream_step(params, config, start, codes[..., :1])[1].block_until_ready(),
            one_step,
            lambda: streamed(params, config, codes, 4),
            lambda: streamed(params, config, codes, 25),
        )
        t_torch, t_torch_1, t_jax, t_first, t_step, t_s4, t_s25 = (
            1e3 * t for t in paired_median_times(fns, warmup=1, repeats=args.repeats)
        )
    print("load:", os.getloadavg(), file=sys.stderr)
    audio_ms = 1e3 * frames * config.total_upsample / c2w.SAMPLE_RATE
    rows = [
        row(f"one-shot, {frames} frames", t_jax / frames, t_torch / frames, "ms/code"),
        row(f"real-time factor, {frames} frames", t_jax / audio_ms, t_torch / audio_ms, "RTF"),
        row("first packet, 1 frame (torch: forward 1 frame)", t_first, t_torch_1, "ms"),
        row("streaming 1 frame per step (torch: one-shot)", t_step, t_torch / frames, "ms/code"),
        *(
            row(f"streaming {m} frames per step (reference: JAX one-shot)", t / frames, one, "ms/code")
            for m, t, one in ((4, t_s4, t_jax / frames), (25, t_s25, t_jax / frames))
        ),
    ]
    emit(rows, args.json)


if __name__ == "__main__":
    main()
