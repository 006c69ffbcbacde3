"""Qwen3-Omni speech output on CPU: JAX vs transformers in one process, the tiny speaking config
(configs/tiny-qwen3-omni.json, random weights), one 2.5-s clip, greedy thinker and talker.

Rows: talker tokens per second (code predictor included), code predictor ms per frame (15 residual
codebooks), time to the first audio packet from the end of the prompt (JAX: `pipe.stream`, whose Talker
starts after the Thinker's first token, with a 1-frame first packet; transformers has no streaming, so its
first audio is its whole `generate`), and the real-time factor of the whole chain (thinker + talker + Code2Wav
wall time / audio seconds; JAX: the whole stream). Compilation is excluded (warm-up runs first); the two sides
run interleaved, one round each at a time, medians reported; `uptime`'s load average goes to stderr.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import emit, parser, row  # noqa: E402

from omni_jax.audio import load_audio  # noqa: E402
from omni_jax.families.qwen3_omni import pipeline, speech  # noqa: E402
from omni_jax.models import talker  # noqa: E402
from omni_jax.testing.checkpoints import TINY_OMNI_CONFIG, shipped_speech, tiny_omni_model  # noqa: E402
from omni_jax.testing.tiny_tokenizer import save_tokenizer_files  # noqa: E402


class Timer:
    """Wraps a method and sums its wall time and calls."""

    def __init__(self, owner, name):
        self.owner, self.name, self.fn = owner, name, getattr(owner, name)
        self.seconds, self.calls = 0.0, 0

    def __enter__(self):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = self.fn(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return out

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.fn)


def torch_round(model, inputs, new, talker_new) -> dict:
    """One transformers generate: talker tokens/s, code predictor ms per frame, first audio (= the whole
    generate: no streaming), RTF."""
    import torch

    given = {k: torch.as_tensor(np.array(v)) for k, v in inputs.items()}
    options = dict(thinker_max_new_tokens=new, thinker_do_sample=False, talker_do_sample=False,
                   talker_max_new_tokens=talker_new, speaker="Ethan")  # fmt: skip
    with torch.inference_mode():
        with Timer(model.talker, "generate") as tk, Timer(model.talker.code_predictor, "generate") as cp:
            start = time.perf_counter()
            _, wav = model.generate(**given, **options)
            total = time.perf_counter() - start
    frames = cp.calls
    return dict(
        talker_tps=(frames + 1) / tk.seconds, cp_ms=1e3 * cp.seconds / frames, first=total,
        rtf=total / (wav.shape[-1] / 24000), frames=frames,
    )  # fmt: skip


def jax_round(pipe, inputs, new, talker_new) -> dict:
    """One `pipe.stream` (the Talker starting after the Thinker's first token; first packet 1 frame, then
    4) timed to its first audio packet and to its end, one talker run and one code-predictor frame."""
    options = dict(
        max_new_tokens=new, return_audio=True, talker_do_sample=False, talker_max_new_tokens=talker_new
    )
    start, first, samples = time.perf_counter(), None, 0
    for event in pipe.stream(inputs, packet=4, first_packet=1, **options):
        if event.kind == "audio":
            first = first or time.perf_counter() - start
            samples += len(event.data[0])
    total = time.perf_counter() - start
    ids = pipe.generate(inputs, max_new_tokens=new)
    prompt = pipe._talker_prompt(inputs, ids[:, : pipeline._answer_length(ids, pipe.eos_ids)], "Ethan")
    settings = speech.TalkerSettings(do_sample=False)
    start = time.perf_counter()
    tokens, frames = speech.talk(
        pipe.params, pipe.speech, prompt, max_new_tokens=talker_new, settings=settings, text_slots=new - 1
    )
    talk_s = time.perf_counter() - start
    c, tk = pipe.speech.talker, pipe.params["talker"]
    hidden, c0 = np.zeros((1, c.body.hidden_size), np.float32), np.zeros((1,), np.int32)
    start = time.perf_counter()
    _predict(tk, c, hidden, c0, jax.random.key(0), settings.samplings(c)[1])[0].block_until_ready()
    cp_s = time.perf_counter() - start
    return dict(
        talker_tps=tokens.shape[1] / talk_s, cp_ms=1e3 * cp_s, first=first, rtf=total / (samples / 24000),
        frames=frames.shape[-1],
    )  # fmt: skip


_predict = jax.jit(talker.predict_codes, static_argnums=(1, 5))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--new", type=int, default=16, help="thinker tokens")
    p.add_argument("--talker-new", type=int, default=40, help="talker tokens (frames + 1)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import torch

    torch.set_num_threads(2)
    model = tiny_omni_model(TINY_OMNI_CONFIG)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        save_tokenizer_files(folder, "qwen3_omni_moe")
        pipe = pipeline.load(folder)
    inputs = pipe.prepare([load_audio(shipped_speech())[:40_000]], ["What is said?"])
    sides = (lambda: torch_round(model, inputs, args.new, args.talker_new),
             lambda: jax_round(pipe, inputs, args.new, args.talker_new))  # fmt: skip
    for side in sides:  # warm-up (compiles)
        side()
    print("load:", os.getloadavg(), file=sys.stderr)
    rounds = [[side() for side in sides] for _ in range(args.repeats)]  # interleaved: torch, JAX, torch, ...
    print("load:", os.getloadavg(), file=sys.stderr)
    ref, ours = ({k: float(np.median([r[i][k] for r in rounds])) for k in rounds[0][i]} for i in (0, 1))
    note = f"tiny config, {int(ours['frames'])} frames"
    rows = [
        row(
            f"talker tokens/s ({note})", ours["talker_tps"], ref["talker_tps"], "tok/s", higher_is_better=True
        ),
        row("code predictor, one frame (15 codebooks)", ours["cp_ms"], ref["cp_ms"], "ms/frame"),
        row(
            "first audio packet from the prompt (torch: whole generate)",
            1e3 * ours["first"],
            1e3 * ref["first"],
            "ms",
        ),
        row("real-time factor, thinker + talker + code2wav (JAX: streamed)", ours["rtf"], ref["rtf"], "RTF"),
    ]
    emit(rows, args.json)


if __name__ == "__main__":
    main()
