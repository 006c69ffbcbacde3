"""Checkpoint conversion: a synthetic 4.1 GB float32 Qwen3 checkpoint (sharded safetensors) to JAX.

Each conversion runs in a fresh process; its peak RSS comes from wait4. The reference is the naive way,
safetensors `load_file` of every shard into memory (what a non-streaming converter must do before it can
even start), measured the same way. Goal: peak RSS <= 1.5 x the largest stacked array + 500 MB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
from common import emit, parser, row  # noqa: E402

CONFIG = {
    "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 32000, "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 20, "num_attention_heads": 16, "num_key_value_heads": 4,
    "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": False,
}  # fmt: skip

CHILD = {
    "ours": "from omni_jax.convert.run import to_jax; to_jax(sys.argv[1], sys.argv[2], fmt=sys.argv[3])",
    "naive": "from safetensors.numpy import load_file; from pathlib import Path; "
    "state = [load_file(f) for f in sorted(Path(sys.argv[1]).glob('*.safetensors'))]",
}


def hf_tensors(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    d, f, q, kv = (
        c["hidden_size"],
        c["intermediate_size"],
        c["num_attention_heads"] * c["head_dim"],
        (c["num_key_value_heads"] * c["head_dim"]),
    )
    out = [("model.embed_tokens.weight", (c["vocab_size"], d))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,))]
        out += [(p + f"self_attn.{n}_norm.weight", (c["head_dim"],)) for n in "qk"]
        out += [(p + "self_attn.q_proj.weight", (q, d)), (p + "self_attn.o_proj.weight", (d, q))]
        out += [(p + f"self_attn.{n}_proj.weight", (kv, d)) for n in "kv"]
        out += [(p + f"mlp.{n}_proj.weight", (f, d)) for n in ("gate", "up")] + [
            (p + "mlp.down_proj.weight", (d, f))
        ]
    return out + [("model.norm.weight", (d,)), ("lm_head.weight", (c["vocab_size"], d))]


def write_checkpoint(folder: Path) -> int:
    """The synthetic HF folder, written one tensor at a time; returns its size in bytes."""
    from omni_jax.convert.checkpoint import SafetensorsWriter

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    entries = [(k, s, np.dtype(np.float32)) for k, s in hf_tensors(CONFIG)]
    writer = SafetensorsWriter(folder, "model", entries, {"format": "pt"}, max_shard_bytes=2 << 30)
    for i, (key, shape, dtype) in enumerate(entries):
        writer.write(key, np.full(shape, 0.01 * (i % 7 + 1), dtype))
    writer.close()
    return sum(int(np.prod(s)) * 4 for _, s, _ in entries)


def run_child(kind: str, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of one child process."""
    code = f"import sys, time; t = time.perf_counter(); {CHILD[kind]}; print(time.perf_counter() - t)"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{kind} child failed ({proc.returncode})")
    return float(out.strip().splitlines()[-1]), usage.ru_maxrss / 1e6


def largest_stacked_bytes(c: dict) -> int:
    return c["num_hidden_layers"] * c["hidden_size"] * c["intermediate_size"] * 4


def main() -> None:
    args = parser(__doc__).parse_args()
    root = Path(tempfile.mkdtemp(prefix="omni_jax_bench_convert_", dir="/tmp"))
    try:
        src = root / "hf"
        size = write_checkpoint(src)
        t_naive, rss_naive = run_child("naive", str(src))
        goal = 1.5 * largest_stacked_bytes(CONFIG) / 1e9 + 0.5
        gb = size / 1e9
        rows = []
        for fmt in ("safetensors", "orbax"):
            dst = root / f"jax_{fmt}"
            t, rss = run_child("ours", str(src), str(dst), fmt)
            shutil.rmtree(dst)
            label = f"to-jax {gb:.1f} GB f32 qwen3 -> {fmt}"
            rows.append(row(f"{label}: time (ref: load_file everything)", t, t_naive, "s"))
            rows.append(
                row(f"{label}: throughput (ref: load_file everything)", gb / t, gb / t_naive, "GB/s", True)
            )
            rows.append(row(f"{label}: peak RSS (ref: load_file everything)", rss, rss_naive, "GB"))
            rows.append(row(f"{label}: peak RSS (ref: goal 1.5 x largest stacked + 0.5 GB)", rss, goal, "GB"))
        emit(rows, args.json)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"(bench/convert.py took {time.perf_counter() - start:.0f} s)", file=sys.stderr)
