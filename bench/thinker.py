"""Qwen3-Omni Thinker, JAX vs transformers in one process (float32 CPU, default-initialised weights), each
side as its users run it: waveforms -> its own processor -> `generate` (greedy, no EOS), warm, torch on the
same 2 threads, the runs of both sides interleaved. First token (processor + AuT + fusion + prefill + 1 token)
and decode throughput ((NEW - 1) tokens per row / (t(NEW) - t(1))), batch 1 and 8.

Configs: tiny (configs/tiny-qwen3-omni-thinker.json), small (AuT 256 wide x 4 layers, thinker 256 wide x 4
MoE layers of 8 experts top-2, head_dim 64, the real 151936-token vocabulary) and 300m (the small AuT,
thinker 1024 wide x 4 MoE layers of 8 experts, ~400M parameters). Clips: 5-10 s of speech.

    python bench/thinker.py [--json] [--repeats N] [--configs tiny small 300m]
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
from common import ROOT, first_token_and_decode_rows, run_configs  # noqa: E402

from omni_jax import parity  # noqa: E402
from omni_jax.families.qwen3_omni import parity as qwen3_omni_parity  # noqa: E402
from omni_jax.families.qwen3_omni import pipeline as qwen3_omni  # noqa: E402
from omni_jax.families.qwen3_omni import system as thinker  # noqa: E402
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor  # noqa: E402

TINY = json.loads((ROOT / "configs" / "tiny-qwen3-omni-thinker.json").read_text())
SMALL_AUDIO = dict(d_model=256, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=1024,
                   downsample_hidden_size=32, output_dim=256)  # fmt: skip
SMALL_TEXT = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    num_experts=8,
    moe_intermediate_size=256,
    mlp_only_layers=[],
    rope_scaling={"rope_type": "default", "mrope_section": [8, 12, 12]},
)
NEW = 32


def small_config() -> dict:
    config = copy.deepcopy(TINY)
    config["thinker_config"]["audio_config"].update(SMALL_AUDIO)
    config["thinker_config"]["text_config"].update(SMALL_TEXT)
    config["thinker_config"]["vision_config"].update(out_hidden_size=SMALL_TEXT["hidden_size"])
    return config


def config_300m() -> dict:
    """~400M parameters (311M of them the embedding and lm_head): the small AuT, a thinker 1024 wide x 4 MoE
    layers of 8 experts top-2 (expert 768)."""
    config = small_config()
    config["thinker_config"]["text_config"].update(
        hidden_size=1024, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
        num_experts=8, moe_intermediate_size=768, intermediate_size=3072,
        rope_scaling={"rope_type": "default", "mrope_section": [8, 12, 12]},
    )  # fmt: skip
    config["thinker_config"]["audio_config"].update(output_dim=1024)
    config["thinker_config"]["vision_config"].update(out_hidden_size=1024)
    return config


def models(hf_config: dict, folder: Path):
    """transformers' thinker, our pipeline (same weights) and transformers' processor."""
    import torch
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(**hf_config)).thinker.eval()
    config, params = parity.from_torch(model)
    pipe = qwen3_omni.Pipeline(config, params, Qwen3OmniProcessor.from_pretrained(folder), (), 0)
    return model, pipe, qwen3_omni_parity.reference_processor(folder)


def timers(model, pipe, ref_processor, clips):
    """(ours(n), reference(n)): callables that take the waveforms through each side's processor and generate
    n greedy tokens, as a user of each library runs it."""
    import torch

    chats = qwen3_omni.conversations(clips, None)

    def ours(n):
        return lambda: np.asarray(
            thinker.generate(pipe.params, pipe.config, pipe.prepare(clips), max_new_tokens=n)
        )

    def reference(n):
        def run():
            batch = ref_processor.apply_chat_template(
                chats, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt",
                processor_kwargs={"padding": True},
            )  # fmt: skip
            with torch.no_grad():
                out = model.generate(
                    **batch, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
                )
            return out[:, batch["input_ids"].shape[1] :].numpy()

        return run

    assert (ours(1)()[:, 0] == reference(1)()[:, 0]).all(), "the first greedy tokens differ"
    return ours, reference


def measure(model, pipe, ref_processor, clips, repeats) -> list[dict]:
    """First token (waveforms -> processor -> 1 token) and decode throughput (NEW - 1 tokens per row over
    t(NEW) - t(1)); the four runs interleaved."""
    ours, reference = timers(model, pipe, ref_processor, clips)
    return first_token_and_decode_rows(ours, reference, len(clips), NEW, repeats)


def measure_config(name: str, folder, speech, repeats: int) -> list[dict]:
    config = {"tiny": TINY, "small": small_config(), "300m": config_300m()}[name]
    model, pipe, ref_processor = models(config, folder)
    clips = [
        np.resize(speech, n) for n in (160_000, 96_000, 128_000, 112_000, 144_000, 80_000, 150_000, 100_000)
    ]
    return [r for b in (1, 8) for r in measure(model, pipe, ref_processor, clips[:b], repeats)]


def main() -> None:
    run_configs(__doc__.splitlines()[0], ("tiny", "small", "300m"), "qwen3_omni_moe", measure_config)


if __name__ == "__main__":
    main()
