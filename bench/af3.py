"""AudioFlamingo3, JAX vs transformers in one process (float32 CPU, seeded random weights): features -> first
token latency (encoder, projector, fusion, prefill, argmax; from the processor's outputs) and greedy decode
throughput ((N - 1) new tokens per row / (time for N - time for 1), both timed back to back), batch 1 and 2.

Configs: tiny (configs/tiny-audioflamingo3.json) and ~50M (encoder 384 wide x 4 layers, Qwen2 128 wide x 6
layers, the real 151672-token vocabulary: 39M of the 50M parameters are the embedding and lm_head). Clips: the
shipped 5.9-s speech clip and 4 s of it (one 30-s window each).

    python bench/af3.py [--json] [--repeats N] [--configs tiny 50m]
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import ROOT, row, run_configs  # noqa: E402

from omni_jax import parity  # noqa: E402
from omni_jax.families.audioflamingo3 import system as af3  # noqa: E402
from omni_jax.families.audioflamingo3.pipeline import Pipeline  # noqa: E402
from omni_jax.families.audioflamingo3.processor import AudioFlamingo3Processor  # noqa: E402
from omni_jax.families.base import decode_layout  # noqa: E402

TINY = json.loads((ROOT / "configs" / "tiny-audioflamingo3.json").read_text())
AUDIO_50M = dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1536)
TEXT_50M = dict(hidden_size=128, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4)
NEW = 32


def config_50m() -> dict:
    config = copy.deepcopy(TINY)
    config["audio_config"].update(AUDIO_50M)
    config["text_config"].update(TEXT_50M)
    return config


def models(hf_config: dict, folder: Path):
    """transformers' model and our pipeline with the same weights; no EOS, so every run makes N tokens."""
    import torch
    from transformers import AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration

    torch.manual_seed(0)
    model = AudioFlamingo3ForConditionalGeneration(AudioFlamingo3Config.from_dict(hf_config)).eval()
    config, params = parity.from_torch(model)
    params = {**params, "decoder": decode_layout(params["decoder"], config.decoder)}  # as load() / the CLI
    return model, Pipeline(config, params, AudioFlamingo3Processor.from_pretrained(folder), (), 0)


def timers(model, pipe, clips):
    """(ours(n), reference(n)): callables generating n greedy tokens from the same processor outputs."""
    import torch

    inputs = pipe.prepare(clips)
    batch = {k: torch.as_tensor(np.array(v)) for k, v in inputs.items()}

    def ours(n):
        return lambda: jax.block_until_ready(af3.generate(pipe.params, pipe.config, inputs, max_new_tokens=n))

    def reference(n):
        def run():
            with torch.no_grad():
                return model.generate(
                    **batch, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                    pad_token_id=0,
                )  # fmt: skip

        return run

    first_ours, first_ref = np.asarray(ours(1)())[:, 0], reference(1)()[:, -1].numpy()
    assert (first_ours == first_ref).all(), "the first greedy tokens differ"
    return ours, reference


def paired(one, many, repeats: int) -> tuple[float, float]:
    """Median time of one() and median of time(many()) - time(one()), run back to back after two warm-ups."""
    for _ in range(2):
        one(), many()
    firsts, extras = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        one()
        middle = time.perf_counter()
        many()
        end = time.perf_counter()
        firsts.append(middle - start)
        extras.append(end - middle - (middle - start))
    return statistics.median(firsts), statistics.median(extras)


def measure(model, pipe, clips, repeats) -> list[dict]:
    b = len(clips)
    (first_ours, extra_ours), (first_ref, extra_ref) = (
        paired(make(1), make(NEW), repeats) for make in timers(model, pipe, clips)
    )
    rows = [row(f"first_token_b{b} (pipeline layout, as the CLI)", 1e3 * first_ours, 1e3 * first_ref, "ms")]
    rate_ours, rate_ref = b * (NEW - 1) / extra_ours, b * (NEW - 1) / extra_ref
    name = f"decode_b{b} (pipeline layout, as the CLI)"
    return rows + [row(name, rate_ours, rate_ref, "tok/s", higher_is_better=True)]


def measure_config(name: str, folder, speech, repeats: int) -> list[dict]:
    model, pipe = models(TINY if name == "tiny" else config_50m(), folder)
    clips = [speech, speech[:64_000]]
    return [r for b in (1, 2) for r in measure(model, pipe, clips[:b], repeats)]


def main() -> None:
    run_configs(__doc__.splitlines()[0], ("tiny", "50m"), "audioflamingo3", measure_config)


if __name__ == "__main__":
    main()
