"""Qwen3-Omni Thinker, JAX vs transformers in one process (float32 CPU, default-initialised weights): audio ->
first token latency (waveform, processor, AuT, fusion, prefill, argmax) at batch 1, and greedy generation
throughput at batch 1 and 2 (32 new tokens per row from processor outputs, prefill included).

Configs: tiny (configs/tiny-qwen3-omni-thinker.json) and small (AuT 256 wide x 4 layers, thinker 256 wide x
4 MoE layers of 8 experts top-2, head_dim 64, the real 151936-token vocabulary). Clips: 10 s of speech and
6 s of it.

    python bench/thinker.py [--json] [--repeats N] [--configs tiny small]
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
from common import ROOT, median_time, row, run_configs  # noqa: E402

from omni_jax import parity  # noqa: E402
from omni_jax.families.qwen3_omni import pipeline as qwen3_omni  # noqa: E402
from omni_jax.families.qwen3_omni import system as thinker  # noqa: E402
from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor  # noqa: E402
from omni_jax.nn.cache import init_cache  # noqa: E402

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
    return config


def models(hf_config: dict, folder: Path):
    """transformers' thinker, our pipeline (same weights) and transformers' processor."""
    import torch
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(**hf_config)).thinker.eval()
    config, params = parity.from_torch(model)
    pipe = qwen3_omni.Pipeline(config, params, Qwen3OmniProcessor.from_pretrained(folder), (), 0)
    return model, pipe, qwen3_omni.reference_processor(folder)


def first_token_ms(model, pipe, ref_processor, clips, repeats) -> dict:
    import torch

    chats = qwen3_omni.conversations(clips, None)

    def ours():
        inputs = pipe.prepare(clips)
        b, t = inputs["input_ids"].shape
        step = thinker.prefill(pipe.params, pipe.config, inputs, init_cache(pipe.config.text, b, t))
        return int(np.asarray(step.logits).argmax(-1)[0])

    def reference():
        batch = ref_processor.apply_chat_template(
            chats, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True},
        )  # fmt: skip
        with torch.no_grad():
            return int(model.generate(**batch, max_new_tokens=1, do_sample=False, pad_token_id=0)[0, -1])

    assert ours() == reference(), "the first greedy tokens differ"
    return row(
        "first_token_b1",
        1e3 * median_time(ours, repeats=repeats),
        1e3 * median_time(reference, repeats=repeats),
        "ms",
    )


def generate_tok_s(model, pipe, clips, repeats) -> dict:
    import torch

    inputs = pipe.prepare(clips)
    batch = {k: torch.as_tensor(np.array(v)) for k, v in inputs.items()}

    def ours():
        jax.block_until_ready(thinker.generate(pipe.params, pipe.config, inputs, max_new_tokens=NEW))

    def reference():
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)

    rates = [len(clips) * NEW / median_time(fn, repeats=repeats) for fn in (ours, reference)]
    return row(f"generate{NEW}_b{len(clips)}", *rates, "tok/s", higher_is_better=True)


def measure_config(name: str, folder, speech, repeats: int) -> list[dict]:
    model, pipe, ref_processor = models(TINY if name == "tiny" else small_config(), folder)
    clips = [np.resize(speech, 160_000), np.resize(speech, 96_000)]
    found = [first_token_ms(model, pipe, ref_processor, clips[:1], repeats)]
    return found + [generate_tok_s(model, pipe, clips[:b], repeats) for b in (1, 2)]


def main() -> None:
    run_configs(__doc__.splitlines()[0], ("tiny", "small"), "qwen3_omni_moe", measure_config)


if __name__ == "__main__":
    main()
