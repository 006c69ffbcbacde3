"""Run outputs of process 0: metrics.jsonl (one flushed line per optimizer step), TensorBoard events, a
progress bar and the loss curve (loss.png, matplotlib)."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

SCALARS = ("loss", "aux_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "eval_loss")


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _tensorboardx():
    """tensorboardX imported with torch hidden: it imports torch whenever installed (to accept tensors),
    which training never passes; torch stays off the training path."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError
    try:
        return importlib.import_module("tensorboardX")
    finally:
        if hide:
            del sys.modules["torch"]


class MetricsLog:
    """Appends to output_dir/metrics.jsonl from `start` on (lines of a killed run past `start` dropped)."""

    def __init__(self, out: Path, start: int, total: int, every: int = 1):
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.every = out, every
        self.path = out / "metrics.jsonl"
        kept = [r for r in read_metrics(self.path) if r["step"] <= start]
        if len(kept) != len(read_metrics(self.path)):
            _atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        self.board = _tensorboardx().SummaryWriter(str(out / "tensorboard"))
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        self.bar.update(1)
        if step % self.every == 0 or "eval_loss" in record:
            for key in SCALARS:
                if key in record:
                    self.board.add_scalar(f"train/{key}", record[key], step)
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}"
            )

    def close(self) -> None:
        self.file.close()
        self.board.close()
        self.bar.close()
        plot_loss(read_metrics(self.path), self.out / "loss.png")


def plot_loss(records: list[dict], path: Path) -> None:
    """Training loss per step (log scale) and the evaluation losses, written atomically."""
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="train loss")
    evals = [r for r in records if "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    ax.set(xlabel="optimizer step", ylabel="loss", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
