"""Training step throughput: one optimizer step (forward, backward, AdamW) of an AF3-shaped model (Qwen2 LM of
~55M parameters + a Whisper-tiny-sized encoder, one 30-s window per example) in omni_jax against torch eager
(`loss.backward()` + `torch.optim.AdamW`), float32 on CPU; MFU (6 N T model FLOPs) against this machine's
measured float32 GEMM ceiling. The labels go through the data pipeline's window (omni_jax's lm_head runs on
the last 64 positions, which hold every target; torch's on all). Two timings: the steps interleaved (JAX,
torch, JAX, ...), and each side's steps back to back as a training loop runs them.

    python bench/train.py --json
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import emit, median_time, paired_median_times, parser, row  # noqa: E402

AUDIO_ID = 31_000
TEXT = 96  # text tokens per example (prompt + answer); the window adds 750 audio tokens


def hf_model():
    import torch
    import transformers

    from omni_jax.parity.reference import randomize

    cfg = transformers.AudioFlamingo3Config(
        audio_config=dict(num_mel_bins=128, hidden_size=384, num_hidden_layers=4, num_attention_heads=6,
                          intermediate_size=1536, max_source_positions=1500),
        text_config=dict(model_type="qwen2", vocab_size=32_000, hidden_size=512, intermediate_size=1408,
                         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                         tie_word_embeddings=False),
        audio_token_id=AUDIO_ID,
    )  # fmt: skip
    torch.manual_seed(0)
    return randomize(transformers.AudioFlamingo3ForConditionalGeneration(cfg), scale=0.02)


def inputs(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.concatenate(
        [np.full((batch, 750), AUDIO_ID), rng.integers(0, 30_000, (batch, TEXT))], axis=1
    ).astype(np.int64)
    labels = np.where(np.arange(ids.shape[1]) >= 750 + TEXT // 2, ids, -100)
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "labels": labels,
        "input_features": rng.standard_normal((batch, 128, 3000)).astype(np.float32),
        "input_features_mask": np.ones((batch, 3000), np.int32),
    }


def gemm_ceiling() -> float:
    """Measured float32 GEMM FLOP/s (2048^3 jnp.matmul)."""
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * 2048**3 / median_time(lambda: f(a).block_until_ready(), repeats=5)


def step_flops(n_params: int, tokens: int) -> float:
    """6 N T (forward + backward matmuls; attention scores left out)."""
    return 6.0 * n_params * tokens


def main() -> None:
    import torch

    from omni_jax.families.audioflamingo3.parity import from_torch
    from omni_jax.train import models
    from omni_jax.train.data import window_for
    from omni_jax.train.loss import keep_label_window, target_span
    from omni_jax.train.step import Hyper, init_state, make_train_step, optimizer, split_params

    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(2)
    model = hf_model()
    n_params = sum(p.numel() for p in model.parameters())
    raw = inputs(args.batch)
    tokens = raw["input_ids"].size

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    batch_t = {k: torch.from_numpy(v) for k, v in raw.items()}
    model.train()

    def torch_step():
        opt.zero_grad()
        model(**batch_t).loss.backward()
        opt.step()

    family = models.family_of(hf_class=type(model).__name__)
    config, params = from_torch(model)
    ids_len = raw["input_ids"].shape[1]
    batch = family.batch(config, raw)  # labels cut to the bucketed window of targets, as the data pipeline
    batch["labels"] = keep_label_window(batch["labels"], window_for(target_span(raw["labels"]), ids_len))
    batch = {k: jnp.asarray(v)[None] for k, v in batch.items()}
    hp = Hyper(learning_rate=1e-5, total_steps=1000)
    trainable, frozen = split_params(params, family.not_trainable)
    tx = optimizer(hp)
    step = make_train_step(family, config, hp, tx)
    state = [init_state(trainable, tx, 0)]

    def jax_step():
        state[0], metrics = step(state[0], frozen, batch)
        metrics["loss"].block_until_ready()

    start = time.perf_counter()
    jax_step()
    compile_s = time.perf_counter() - start
    jax_s, torch_s = paired_median_times((jax_step, torch_step), warmup=1, repeats=args.repeats)
    # a training loop runs its steps back to back: between interleaved steps torch frees its ~GB of
    # activations and glibc returns them to the OS, so JAX's next step faults its buffers' pages in again
    jax_loop_s = median_time(jax_step, warmup=1, repeats=args.repeats)
    torch_loop_s = median_time(torch_step, warmup=1, repeats=args.repeats)
    ceiling = gemm_ceiling()
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}", file=sys.stderr)
    flops = step_flops(n_params, tokens)
    name = f"AF3-shaped {n_params / 1e6:.0f}M, b{args.batch} x {tokens // args.batch} tokens"
    emit(
        [
            row(f"{name}: train step", tokens / jax_s, tokens / torch_s, "tok/s", higher_is_better=True),
            row(
                f"{name}: train step, each side's steps back to back",
                tokens / jax_loop_s,
                tokens / torch_loop_s,
                "tok/s",
                higher_is_better=True,
            ),  # fmt: skip
            row(
                f"{name}: MFU vs f32 GEMM ceiling",
                flops / jax_s / ceiling,
                flops / torch_s / ceiling,
                "frac",
                higher_is_better=True,
            ),  # fmt: skip
            row("float32 GEMM ceiling (2048^3)", ceiling / 1e9, None, "GFLOP/s"),
            row(f"{name}: first step (compile)", compile_s, None, "s"),
        ],
        args.json,
    )


if __name__ == "__main__":
    main()
