"""Decoder engine vs transformers, same process, float32 CPU.

A ~55M-parameter Qwen2 (hidden 512, 8 layers, 8 heads, 2 kv heads, intermediate 1408, vocab 32000): prefill
of 512 tokens, greedy decode of 128 tokens at batch 1 and 8 (`generate` both sides, 16-token prompts), and
the batch-1 decode as a percent of the memory-bandwidth bound (weight bytes read per step / copy bandwidth
measured here on every core, STREAM convention: bytes read + written). Three parameter layouts: stacked
(`lax.scan`), `decoder.unstack_layers`, and `decoder.cpu_layout` (unstacked + packed linears, the CPU
decode kernels).
A Qwen3-MoE of the same shape (8 experts, top-2): `cpu_layout` (packed experts, only the picked ones read),
ragged and dense dispatch (stacked layout, prefill of 512 and 2048 tokens), against transformers. Prefill
rows interleave the JAX and torch calls.

    python bench/decode.py [--json] [--repeats N]
"""

from __future__ import annotations

import dataclasses
import os
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from common import emit, median_time, paired_median_times, parser, row  # noqa: E402

from omni_jax import parity  # noqa: E402
from omni_jax.inference.engine import prefill  # noqa: E402
from omni_jax.inference.loop import generate  # noqa: E402
from omni_jax.models import decoder  # noqa: E402
from omni_jax.nn.cache import init_cache  # noqa: E402

SHAPE = dict(
    vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
    intermediate_size=1408, max_position_embeddings=2048,
)  # fmt: skip
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=704, norm_topk_prob=True)
PROMPT, PREFILL, NEW = 16, 512, 128


def copy_bandwidth(nbytes: int = 256 << 20) -> float:
    """Bytes/s moved by a large copy on every core (read + write), median of 10."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(src.size), os.cpu_count() or 1)
    spans = [slice(int(p[0]), int(p[-1]) + 1) for p in parts if p.size]
    with ThreadPoolExecutor(len(spans)) as pool:  # numpy copies release the GIL

        def copy():
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), spans))

        return 2 * nbytes / median_time(copy, warmup=1, repeats=10)


def step_bytes(params: dict) -> int:
    """Weight bytes one decode step reads: everything but the embedding table (one row of it)."""
    return sum(a.nbytes for k, v in params.items() if k != "embed" for a in jax.tree.leaves(v))


def models(kind: str):
    torch.manual_seed(0)
    if kind == "qwen2":
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SHAPE))
    else:
        hf = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(head_dim=64, **SHAPE, **MOE))
    config, params = parity.from_torch(hf.eval())
    return hf, config, params


def hf_generate(hf, ids, new):
    with torch.no_grad():
        hf.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip


def hf_prefill(hf, ids):
    with torch.no_grad():
        hf(input_ids=ids, use_cache=True, logits_to_keep=1)


def jax_generate(params, config, ids, new):
    generate(params, config, ids, max_new_tokens=new).block_until_ready()


def jax_prefill(params, config, ids):
    prefill(params, config, ids, init_cache(config, ids.shape[0], ids.shape[1])).logits.block_until_ready()


def decode_rows(hf, config, layouts: dict, repeats, batches=(1, 8)) -> dict:
    """{layout name: [row per batch size]}, transformers timed once per batch size."""
    rows = {tag: [] for tag in layouts}
    for b in batches:
        ids = torch.randint(1, SHAPE["vocab_size"], (b, PROMPT), generator=torch.Generator().manual_seed(b))
        ref = median_time(lambda ids=ids: hf_generate(hf, ids, NEW), warmup=1, repeats=repeats)
        for tag, params in layouts.items():
            ours = median_time(
                lambda ids=ids, p=params: jax_generate(p, config, ids.numpy(), NEW), warmup=1, repeats=repeats
            )
            name = f"{tag}_decode{NEW}_b{b}"
            rows[tag].append(row(name, b * NEW / ours, b * NEW / ref, "tok/s", higher_is_better=True))
    return rows


def prefill_row(tag, hf, config, params, repeats, tokens=PREFILL):
    ids = torch.randint(1, SHAPE["vocab_size"], (1, tokens), generator=torch.Generator().manual_seed(0))
    ours, ref = paired_median_times(
        (lambda: jax_prefill(params, config, ids.numpy()), lambda: hf_prefill(hf, ids)), repeats=repeats
    )
    return row(f"{tag}_prefill{tokens}_b1", 1e3 * ours, 1e3 * ref, "ms")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)

    hf, config, params = models("qwen2")
    rows = [prefill_row("qwen2", hf, config, params, args.repeats)]
    rows.append(prefill_row("qwen2_cpu_layout", hf, config, decoder.cpu_layout(params, config), args.repeats))
    bound = copy_bandwidth() / step_bytes(params)  # steps/s at batch 1
    layouts = {
        "qwen2": params,
        "qwen2_unstacked": decoder.unstack_layers(params),
        "qwen2_cpu_layout": decoder.cpu_layout(params, config),
    }
    for tag, decode in decode_rows(hf, config, layouts, args.repeats).items():
        percents = 100 * decode[0]["jax"] / bound, 100 * decode[0]["reference"] / bound
        bandwidth = row(f"{tag}_decode_b1_bandwidth", *percents, "% of bound", higher_is_better=True)
        rows += [*decode, bandwidth | {"bound_tok_s": round(bound, 1)}]

    hf, config, params = models("qwen3_moe")
    layout = decoder.cpu_layout(params, config)
    rows.append(prefill_row("moe_cpu_layout", hf, config, layout, args.repeats))
    rows += decode_rows(hf, config, {"moe_cpu_layout": layout}, args.repeats)["moe_cpu_layout"]
    for impl in ("ragged", "dense"):
        cfg = dataclasses.replace(config, moe_impl=impl)
        rows += [prefill_row(f"moe_{impl}", hf, cfg, params, args.repeats, n) for n in (PREFILL, 4 * PREFILL)]
        rows += decode_rows(hf, cfg, {f"moe_{impl}": params}, args.repeats, batches=(1,))[f"moe_{impl}"]
    emit(rows, args.json)


if __name__ == "__main__":
    main()
