"""Speech recognition with the real Whisper tiny.en weights, in one process: 8 clips as one batch (JAX
`transcribe` vs transformers' `generate`, and vs CTranslate2 float32 when its wheel is installed) and one 75-s
clip (JAX long form vs transformers' pipeline(chunk_length_s=30, batch_size=4)). Times include the log-mel
features and decoding to text; greedy; every side must produce the same texts."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
from common import emit, median_time, parser, row  # noqa: E402

from omni_jax.audio import load_audio  # noqa: E402
from omni_jax.convert.ctranslate2 import whisper_tiny_dir  # noqa: E402
from omni_jax.families.registry import load_pipeline  # noqa: E402
from omni_jax.families.whisper.parity import reference_model  # noqa: E402
from omni_jax.testing.checkpoints import shipped_speech  # noqa: E402
from omni_jax.testing.speech import SENTENCES, long_speech, synthesize  # noqa: E402

EXTRA = ("the rain in spain stays mainly in the plain", "seven eight nine ten eleven twelve")


def clips() -> list[np.ndarray]:
    return [load_audio(shipped_speech())] + [synthesize(s) for s in SENTENCES[:5] + EXTRA]


def ctranslate2_texts(model_dir, extractor, tokenizer, audio):
    """A function running CTranslate2 (float32, 2 threads, greedy, prompt [sot, notimestamps]) on `audio`,
    or None without the wheel."""
    try:
        import ctranslate2
    except ImportError:
        return None
    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32", intra_threads=2)

    def run():
        features = extractor(audio, sampling_rate=16000, return_tensors="np").input_features
        prompts = [[50257, 50362]] * len(audio)
        out = model.generate(ctranslate2.StorageView.from_array(features), prompts, beam_size=1)
        return tokenizer.batch_decode([r.sequences_ids[0] for r in out], skip_special_tokens=True)

    return run


def main() -> None:
    args = parser(__doc__).parse_args()
    import torch
    import transformers

    torch.set_num_threads(2)
    model_dir = whisper_tiny_dir()
    pipe, hf = load_pipeline(model_dir), reference_model(model_dir)
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    tokenizer = transformers.WhisperTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"), pad_token="<|endoftext|>"
    )
    audio = clips()

    def run_jax():
        return [r["text"] for r in pipe.transcribe(audio, batch_size=len(audio))]

    def run_torch():
        features = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = hf.generate(features, do_sample=False, num_beams=1)
        return tokenizer.batch_decode(ids, skip_special_tokens=True)

    texts = run_jax()
    if texts != run_torch():
        raise SystemExit(f"JAX and transformers texts differ: {texts} vs {run_torch()}")
    t_jax, t_torch = median_time(run_jax, warmup=1, repeats=3), median_time(run_torch, warmup=1, repeats=3)
    seconds = sum(len(a) for a in audio) / 16000
    name = f"tiny.en, {len(audio)} clips ({seconds:.0f} s) in one batch"
    rows = [row(f"{name}, vs transformers generate", t_jax * 1e3, t_torch * 1e3, "ms")]
    ct2 = ctranslate2_texts(model_dir, extractor, tokenizer, audio)
    if ct2 is not None:
        if ct2() != texts:
            print(f"note: CTranslate2 texts differ: {ct2()}", file=sys.stderr)
        rows.append(
            row(
                f"{name}, vs CTranslate2 float32",
                t_jax * 1e3,
                median_time(ct2, warmup=1, repeats=3) * 1e3,
                "ms",
            )
        )

    long = long_speech(75)
    asr = transformers.pipeline(
        "automatic-speech-recognition", model=hf, tokenizer=tokenizer, feature_extractor=extractor,
        chunk_length_s=30, batch_size=4,
    )  # fmt: skip

    def run_long_jax():
        return pipe.transcribe([long], batch_size=4)[0]["text"]

    def run_long_torch():
        return asr(long, generate_kwargs=dict(do_sample=False, num_beams=1))["text"]

    if run_long_jax() != run_long_torch():
        raise SystemExit("long form: JAX and transformers' pipeline texts differ")
    t_jax, t_torch = (median_time(f, warmup=1, repeats=3) for f in (run_long_jax, run_long_torch))
    rows.append(
        row(
            "tiny.en, 75-s clip long form (4 windows), vs transformers pipeline",
            t_jax * 1e3,
            t_torch * 1e3,
            "ms",
        )
    )
    emit(rows, args.json)


if __name__ == "__main__":
    main()
