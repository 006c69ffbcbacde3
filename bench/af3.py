"""AudioFlamingo3, JAX vs transformers in one process (float32 CPU, seeded random weights), from the same
processor outputs to `generate` (greedy, no EOS), warm, torch on the same 2 threads, the runs of both sides
interleaved: first token (encoder, projector, fusion, prefill, 1 token) and decode throughput ((N - 1) new
tokens per row / (t(N) - t(1))), batch 1 and 8.

Configs: tiny (configs/tiny-audioflamingo3.json), ~50M (encoder 384 wide x 4 layers, Qwen2 128 wide x 6
layers, the real 151672-token vocabulary: 39M of the 50M parameters are the embedding and lm_head) and ~350M
(encoder 512 x 6, Qwen2 768 x 12). Clips: 2-6 s of the shipped speech clip (one 30-s window each).

    python bench/af3.py [--json] [--repeats N] [--configs tiny 50m 300m]
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import ROOT, first_token_and_decode_rows, run_configs  # noqa: E402

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


def config_300m() -> dict:
    """~350M parameters (233M of them the embedding and lm_head): encoder 512 wide x 6 layers, Qwen2 768 wide
    x 12 layers."""
    config = copy.deepcopy(TINY)
    config["audio_config"].update(
        hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048
    )
    config["text_config"].update(
        hidden_size=768,
        intermediate_size=2816,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=2,
    )
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


def measure(model, pipe, clips, repeats) -> list[dict]:
    """First token and decode throughput ((NEW - 1) tokens per row / (t(NEW) - t(1))), the runs of both sides
    interleaved."""
    ours, reference = timers(model, pipe, clips)
    return first_token_and_decode_rows(
        ours, reference, len(clips), NEW, repeats, " (pipeline layout, as the CLI)"
    )


def measure_config(name: str, folder, speech, repeats: int) -> list[dict]:
    config = {"tiny": TINY, "50m": config_50m(), "300m": config_300m()}[name]
    model, pipe = models(config, folder)
    clips = [speech[: n * 16_000] for n in (6, 4, 5, 3, 6, 2, 5, 4)]
    return [r for b in (1, 8) for r in measure(model, pipe, clips[:b], repeats)]


def main() -> None:
    run_configs(__doc__.splitlines()[0], ("tiny", "50m", "300m"), "audioflamingo3", measure_config)


if __name__ == "__main__":
    main()
