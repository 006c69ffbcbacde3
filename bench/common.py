"""Shared benchmark plumbing: timing, rows, and the --json / table output contract."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_time(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 7) -> float:
    """Median wall time of fn() in seconds, after warm-up calls (compilation included there)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# torch's OpenMP workers spin for about 10 ms after each call (measured on the 2-core EPYC: 8-11 ms of CPU
# in the first 10 ms, then none); XLA's do not. A call timed right after a torch call would share its cores
# with them, so each timed call of `paired_median_times` starts after this idle gap.
SETTLE_S = 0.02


def paired_median_times(
    fns: tuple[Callable[[], object], ...], *, warmup: int = 1, repeats: int = 5
) -> list[float]:
    """Median wall time (s) of each fn, the calls interleaved (a b a b ...) so that a load change on a shared
    machine hits every side alike, each after an idle gap of SETTLE_S; warm-up calls (compilation included)
    first."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def row(
    name: str, jax_value: float, reference: float | None, unit: str, higher_is_better: bool = False
) -> dict:
    """One result row; ratio > 1 means JAX is better (faster, or higher throughput)."""
    if reference is None or jax_value == 0:
        ratio = None
    else:
        ratio = jax_value / reference if higher_is_better else reference / jax_value
    return {"name": name, "jax": jax_value, "reference": reference, "unit": unit, "ratio": ratio}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    return p


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def emit(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(r), flush=True)
        return
    print(f"machine: {platform.machine()} {platform.processor() or ''}".strip())
    print(f"{'case':<48} {'jax':>10} {'reference':>10} {'unit':>10} {'ratio':>7}")
    for r in rows:
        print(
            f"{r['name']:<48} {_fmt(r['jax']):>10} {_fmt(r['reference']):>10} "
            f"{r['unit']:>10} {_fmt(r['ratio']):>7}"
        )


def run_configs(
    description: str, configs: tuple[str, ...], family: str, measure: Callable[[str, str, object, int], list]
) -> None:
    """main() of the model benchmarks: --json, --repeats, --configs (any of `configs`, all by default); torch
    on 2 threads. For each chosen config, `measure(config, tokenizer_folder, speech, repeats)` -> rows (their
    names get the config's as a prefix), where speech is the shipped clip and the folder holds `family`'s
    tokenizer files; the rows are emitted."""
    import torch

    from omni_jax.audio import load_audio
    from omni_jax.testing.tiny_tokenizer import save_tokenizer_files

    p = parser(description)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", nargs="+", default=list(configs), choices=list(configs))
    args = p.parse_args()
    torch.set_num_threads(2)
    speech = load_audio(ROOT / "omni_jax" / "assets" / "speech.wav")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tokenizer_files(tmp, family)
        for name in args.configs:
            rows += [
                {**r, "name": f"{name}_{r['name']}"} for r in measure(name, folder, speech, args.repeats)
            ]
    emit(rows, args.json)


def first_token_and_decode_rows(
    ours, reference, b: int, new: int, repeats: int, label: str = ""
) -> list[dict]:
    """Rows of first-token time and decode tok/s at batch b from timers ours(n) / reference(n) (n new
    tokens): decode = b (new - 1) / (t(new) - t(1)), the four runs interleaved."""
    o1, on, r1, rn = paired_median_times((ours(1), ours(new), reference(1), reference(new)), repeats=repeats)
    rates = b * (new - 1) / (on - o1), b * (new - 1) / (rn - r1)
    return [
        row(f"first_token_b{b}{label}", 1e3 * o1, 1e3 * r1, "ms"),
        row(f"decode_b{b}{label}", *rates, "tok/s", higher_is_better=True),
    ]
