"""Peak memory against audio length: AudioFlamingo3 tiny (configs/tiny-audioflamingo3.json, the cached random
checkpoint) on 1, 5 and 10 minutes of audio (the shipped speech clip repeated), prepare + 4 greedy tokens,
JAX pipeline vs transformers' `generate`. Each case runs in a fresh process; the value is its peak RSS
(ru_maxrss: runtime, weights, features and activations together). A watchdog kills a case past --cap-gb.

    python bench/memory.py [--json] [--minutes 1 5 10] [--cap-gb 12] [--no-reference]
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from common import ROOT, emit, parser, row  # noqa: E402

NEW_TOKENS = 4


def clip(minutes: float):
    import numpy as np

    from omni_jax.audio import load_audio
    from omni_jax.testing.checkpoints import shipped_speech

    speech = load_audio(shipped_speech())
    n = int(minutes * 60 * 16000)
    return np.tile(speech, -(-n // len(speech)))[:n]


def run_jax(minutes: float) -> None:
    from omni_jax.families.registry import load_pipeline
    from omni_jax.testing.checkpoints import cached_tiny_checkpoint

    pipe = load_pipeline(cached_tiny_checkpoint())
    pipe.generate(pipe.prepare([clip(minutes)]), max_new_tokens=NEW_TOKENS)


def run_torch(minutes: float) -> None:
    import torch
    from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor

    from omni_jax.testing.checkpoints import cached_tiny_checkpoint

    torch.set_num_threads(2)
    folder = cached_tiny_checkpoint()
    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(folder).eval()
    inputs = AutoProcessor.from_pretrained(folder).apply_transcription_request(clip(minutes))
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)


def peak_mb(side: str, minutes: float, cap_gb: float) -> float | None:
    """Peak RSS (MB) of one case in a child process; None when it failed or passed the cap."""
    argv = [sys.executable, __file__, "--child", side, str(minutes)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if _rss_mb(proc.pid) > cap_gb * 1024:
            proc.kill()
            print(f"{side} {minutes} min: killed past {cap_gb} GB", file=sys.stderr)
        time.sleep(0.1)
    out = proc.stdout.read().strip().splitlines()
    return float(out[-1]) if proc.returncode == 0 and out else None


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(line for line in f if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return 0.0


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        side, minutes = sys.argv[2], float(sys.argv[3])
        (run_jax if side == "jax" else run_torch)(minutes)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10])
    p.add_argument("--cap-gb", type=float, default=12.0)
    p.add_argument("--no-reference", action="store_true")
    args = p.parse_args()
    rows = []
    for minutes in args.minutes:
        ours = peak_mb("jax", minutes, args.cap_gb)
        reference = None if args.no_reference else peak_mb("torch", minutes, args.cap_gb)
        rows.append(row(f"af3 tiny peak RSS, {minutes:g} min audio", ours, reference, "MB"))
    emit(rows, args.json)


if __name__ == "__main__":
    main()
