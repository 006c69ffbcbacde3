"""Qwen3-Omni speech output on CPU: JAX vs transformers in one process, the tiny speaking config
(configs/tiny-qwen3-omni.json, random weights), one 2.5-s clip, greedy thinker and talker.

Rows: talker tokens per second (code predictor included), code predictor ms per frame (15 residual
codebooks), time to the first audio packet from the end of the prompt (JAX: `pipe.stream` with a 1-frame
first packet; transformers has no streaming, so its first audio is its whole `generate`), and the real-time
factor of the whole chain (thinker + talker + Code2Wav wall time / audio seconds). Compilation is excluded
(warm-up runs first).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import emit, median_time, parser, row  # noqa: E402

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


def torch_rows(model, inputs, new, talker_new):
    import torch

    given = {k: torch.as_tensor(np.array(v)) for k, v in inputs.items()}
    options = dict(thinker_max_new_tokens=new, thinker_do_sample=False, talker_do_sample=False,
                   talker_max_new_tokens=talker_new, speaker="Ethan")  # fmt: skip
    with torch.inference_mode():
        model.generate(**given, **options)  # warm-up
        with Timer(model.talker, "generate") as tk, Timer(model.talker.code_predictor, "generate") as cp:
            start = time.perf_counter()
            _, wav = model.generate(**given, **options)
            total = time.perf_counter() - start
    frames = cp.calls
    return dict(
        talker_tps=(frames + 1) / tk.seconds, cp_ms=1e3 * cp.seconds / frames, first=total,
        rtf=total / (wav.shape[-1] / 24000), frames=frames,
    )  # fmt: skip


def jax_rows(pipe, inputs, new, talker_new, repeats):
    options = dict(
        max_new_tokens=new, return_audio=True, talker_do_sample=False, talker_max_new_tokens=talker_new
    )
    out = pipe.generate(inputs, **options)  # warm-up (compiles)
    list(pipe.stream(inputs, packet=4, first_packet=1, **options))
    total = median_time(lambda: pipe.generate(inputs, **options), warmup=0, repeats=repeats)

    def first_packet():
        start = time.perf_counter()
        for event in pipe.stream(inputs, packet=4, first_packet=1, **options):
            if event.kind == "audio":
                return time.perf_counter() - start

    first = float(np.median([first_packet() for _ in range(repeats)]))
    prompt = pipe._talker_prompt(inputs, out.ids, "Ethan")
    settings = speech.TalkerSettings(do_sample=False)
    tk, c = pipe.params["talker"], pipe.speech.talker

    def talk():
        return speech.talk(tk, c, prompt, max_new_tokens=talker_new, settings=settings)

    talk_s = median_time(talk, warmup=1, repeats=repeats)
    tokens = talk()[0].shape[1]
    predict = jax.jit(talker.predict_codes, static_argnums=(1, 5))
    hidden, c0, key = (
        np.zeros((1, c.body.hidden_size), np.float32),
        np.zeros((1,), np.int32),
        jax.random.key(0),
    )
    cp_s = median_time(
        lambda: predict(tk, c, hidden, c0, key, settings.samplings(c)[1])[0].block_until_ready(),
        repeats=repeats,
    )
    audio_s = len(out.audio[0]) / out.sample_rate
    return dict(
        talker_tps=tokens / talk_s,
        cp_ms=1e3 * cp_s,
        first=first,
        rtf=total / audio_s,
        frames=out.codes[0].shape[1],
    )


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
    ref = torch_rows(model, inputs, args.new, args.talker_new)
    ours = jax_rows(pipe, inputs, args.new, args.talker_new, args.repeats)
    note = f"tiny config, {ours['frames']} frames"
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
        row("real-time factor, thinker + talker + code2wav", ours["rtf"], ref["rtf"], "RTF"),
    ]
    emit(rows, args.json)


if __name__ == "__main__":
    main()
