"""Peak memory against audio length: the tiny AudioFlamingo3 (configs/tiny-audioflamingo3.json, the cached
random checkpoint) and the tiny Qwen3-Omni thinker (configs/tiny-qwen3-omni-thinker.json, random weights) on
1, 5 and 10 minutes of audio (the shipped speech clip repeated), prepare + 4 greedy tokens, JAX pipeline vs
transformers' processor + `generate`. Each case runs in a fresh process; the value is its peak RSS
(ru_maxrss: runtime, weights, features and activations together). A watchdog kills a case past --cap-gb
(the row then shows no value). The Qwen3-Omni reference imports omni_jax for transformers' processor setup.

    python bench/memory.py [--json] [--models af3 qwen3-omni] [--minutes 1 5 10] [--cap-gb 12]
        [--no-reference]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from common import ROOT, emit, parser, row  # noqa: E402

NEW_TOKENS = 4
SPEECH = ROOT / "omni_jax" / "assets" / "speech.wav"  # 16 kHz mono
QWEN_TINY = ROOT / "configs" / "tiny-qwen3-omni-thinker.json"


def clip(minutes: float):
    """The shipped clip repeated to `minutes` (read with soundfile: the reference processes import no JAX)."""
    import numpy as np
    import soundfile as sf

    speech, _ = sf.read(SPEECH, dtype="float32")
    n = int(minutes * 60 * 16000)
    return np.tile(speech, -(-n // len(speech)))[:n]


def af3_jax(folder: str, minutes: float) -> None:
    from omni_jax.families.registry import load_pipeline

    pipe = load_pipeline(folder)
    pipe.generate(pipe.prepare([clip(minutes)]), max_new_tokens=NEW_TOKENS)


def af3_torch(folder: str, minutes: float) -> None:
    import torch
    from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor

    torch.set_num_threads(2)
    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(folder).eval()
    inputs = AutoProcessor.from_pretrained(folder).apply_transcription_request(clip(minutes))
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)


def qwen_jax(folder: str, minutes: float) -> None:
    """Random weights of the tiny thinker (no checkpoint needed: memory is what is measured)."""
    import jax

    from omni_jax.families.base import decode_layout
    from omni_jax.families.qwen3_omni import pipeline, system
    from omni_jax.families.qwen3_omni.processor import Qwen3OmniProcessor
    from omni_jax.nn.params import init_params

    config = system.ThinkerConfig.from_hf(json.loads(QWEN_TINY.read_text()))
    params = init_params(system.param_specs(config), jax.random.PRNGKey(0))
    params["thinker"] = decode_layout(params["thinker"], config.text)
    processor = Qwen3OmniProcessor.from_pretrained(folder)
    pipe = pipeline.Pipeline(config, params, processor, (pipeline.IM_END,), pipeline.IM_END)
    pipe.generate(pipe.prepare([clip(minutes)]), max_new_tokens=NEW_TOKENS)


def qwen_torch(folder: str, minutes: float) -> None:
    import torch
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    from omni_jax.families.qwen3_omni.parity import reference_processor

    torch.set_num_threads(2)
    hf = json.loads(QWEN_TINY.read_text())
    model = Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(**hf)).thinker.eval()
    request = {"type": "text", "text": "Transcribe the input speech."}
    chat = [{"role": "user", "content": [{"type": "audio", "audio": clip(minutes)}, request]}]
    batch = reference_processor(folder).apply_chat_template(
        [chat], tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)


CASES = {"af3": (af3_jax, af3_torch), "qwen3-omni": (qwen_jax, qwen_torch)}


def folders() -> dict[str, str]:
    """The tiny AF3 checkpoint (cached) and a folder of the tiny Qwen3-Omni tokenizer / processor files."""
    from omni_jax.testing.checkpoints import CACHE, cached_tiny_checkpoint
    from omni_jax.testing.tiny_tokenizer import save_tokenizer_files

    qwen = CACHE / "qwen3-omni-tokenizer"
    if not (qwen / "processor_config.json").is_file():
        save_tokenizer_files(qwen, "qwen3_omni_moe")
    return {"af3": str(cached_tiny_checkpoint()), "qwen3-omni": str(qwen)}


def peak_mb(model: str, side: int, folder: str, minutes: float, cap_gb: float) -> float | None:
    """Peak RSS (MB) of one case in a child process; None when it failed or passed the cap."""
    argv = [sys.executable, __file__, "--child", model, str(side), folder, str(minutes)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if _rss_mb(proc.pid) > cap_gb * 1024:
            proc.kill()
            print(f"{model} {argv[4:]}: killed past {cap_gb} GB", file=sys.stderr)
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
        model, side, folder, minutes = sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
        CASES[model][side](folder, minutes)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10])
    p.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--cap-gb", type=float, default=12.0)
    p.add_argument("--no-reference", action="store_true")
    args = p.parse_args()
    found = folders()
    rows = []
    for model in args.models:
        for minutes in args.minutes:
            ours = peak_mb(model, 0, found[model], minutes, args.cap_gb)
            ref = None if args.no_reference else peak_mb(model, 1, found[model], minutes, args.cap_gb)
            rows.append(row(f"{model} tiny peak RSS, {minutes:g} min audio", ours, ref, "MB"))
    emit(rows, args.json)


if __name__ == "__main__":
    main()
