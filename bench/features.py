"""Log-mel features: JAX vs transformers' WhisperFeatureExtractor (numpy and torch paths), 8 x 30 s."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import emit, median_time, parser, row  # noqa: E402

from omni_jax.audio import log_mel_spectrogram  # noqa: E402


def main() -> None:
    args = parser(__doc__).parse_args()
    import torch
    from transformers import WhisperFeatureExtractor

    torch.set_num_threads(2)
    batch = np.random.default_rng(0).normal(0, 0.1, (8, 480000)).astype(np.float32)
    device_batch = jnp.asarray(batch)
    rows = []
    for bins in (80, 128):
        extractor = WhisperFeatureExtractor(feature_size=bins)
        t_torch = median_time(lambda e=extractor: e._torch_extract_fbank_features(batch), repeats=9)
        t_numpy = (
            median_time(lambda e=extractor: e._np_extract_fbank_features(batch[:1], "cpu"), repeats=3) * 8
        )
        for mode, f64 in (("exact float64 STFT", True), ("float32 STFT", False)):
            t_jax = median_time(
                lambda b=bins, f=f64: log_mel_spectrogram(device_batch, b, f).block_until_ready(), repeats=9
            )
            rows.append(
                row(f"log-mel {bins} bins 8x30s, {mode} vs torch path", t_jax * 1e3, t_torch * 1e3, "ms")
            )
            rows.append(
                row(f"log-mel {bins} bins 8x30s, {mode} vs numpy path", t_jax * 1e3, t_numpy * 1e3, "ms")
            )
    emit(rows, args.json)


if __name__ == "__main__":
    main()
