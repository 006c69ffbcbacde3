"""Speech synthesised on the fly by espeak-ng (a system package): for the tests, the demo, the benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from omni_jax.audio import load_audio

SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "one two three four five",
    "she sells sea shells by the sea shore",
    "hello world, this is a test of the speech recognition system",
    "please call stella and ask her to bring these things with her from the store",
)


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, words_per_minute: int = 120) -> np.ndarray:
    """`text` spoken by espeak-ng (en-us), resampled from its 22 050 Hz to 16 kHz. -> float32 samples."""
    if not have_espeak():
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        command = ["espeak-ng", "-v", "en-us", "-s", str(words_per_minute), "-w", str(wav), text]
        subprocess.run(command, check=True, capture_output=True)
        return load_audio(wav)


def long_speech(seconds: float, sentences=SENTENCES, gap: float = 0.4) -> np.ndarray:
    """Sentences spoken one after another (with `gap` s of silence between), repeated up to `seconds`."""
    spoken = [synthesize(s) for s in sentences]
    silence = np.zeros(int(gap * 16000), np.float32)
    out, n, i = [], 0, 0
    while n < seconds * 16000:
        piece = np.concatenate([spoken[i % len(spoken)], silence])
        out.append(piece)
        n, i = n + len(piece), i + 1
    return np.concatenate(out)[: int(seconds * 16000)]
