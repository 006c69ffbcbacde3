"""What the family pipelines share: the loaded parts, generation via the family model module, decoding."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np

import omni_jax
from omni_jax.inference.sampling import GREEDY, Sampling


def load_checkpoint(path, model: ModuleType, config_cls: Any, dtype=None) -> tuple[Path, dict, Any, dict]:
    """(folder, its config.json, `config_cls.from_hf` of it, params) of an HF folder or its omni_jax
    conversion; an error when weights of `model.param_specs(config)` are missing."""
    path = Path(path)
    hf_config = json.loads((path / "config.json").read_text())
    config = config_cls.from_hf(hf_config)
    _, params = omni_jax.load_pretrained(path, dtype=None if dtype is None else jax.numpy.dtype(dtype))
    if missing := [name for name in model.param_specs(config) if name not in params]:
        raise ValueError(f"{path}: the checkpoint has no weights for {missing}")
    return path, hf_config, config, params


class BasePipeline:
    """A loaded checkpoint: config, params, processor and the EOS / pad ids. A subclass sets `model`, the
    family's model module (`generate` and `stream` with the params, config, inputs and keyword arguments of
    omni_jax.models.audioflamingo3), and defines `prepare`."""

    model: ModuleType

    def __init__(self, config: Any, params: dict, processor: Any, eos_ids: tuple[int, ...], pad_id: int):
        self.config, self.params, self.processor = config, params, processor
        self.eos_ids, self.pad_id = eos_ids, pad_id

    def _options(self, max_new_tokens: int, sampling: Sampling, seed: int) -> dict:
        return dict(
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            seed=seed,
        )

    def generate(
        self, inputs: dict, *, max_new_tokens: int, sampling: Sampling = GREEDY, seed: int = 0
    ) -> np.ndarray:
        """New token ids b n (finished rows padded with the pad id)."""
        options = self._options(max_new_tokens, sampling, seed)
        return np.asarray(self.model.generate(self.params, self.config, inputs, **options))

    def stream(
        self, inputs: dict, *, max_new_tokens: int, sampling: Sampling = GREEDY, seed: int = 0
    ) -> Iterator[np.ndarray]:
        """Each step's tokens (b,) as they are chosen."""
        options = self._options(max_new_tokens, sampling, seed)
        yield from self.model.stream(self.params, self.config, inputs, **options)

    def decode(self, ids) -> list[str]:
        """Text of each row up to its first EOS, special tokens dropped."""
        rows = []
        for row in np.asarray(ids):
            end = np.flatnonzero(np.isin(row, self.eos_ids))
            rows.append(row[: end[0]] if len(end) else row)
        return self.processor.batch_decode(rows, skip_special_tokens=True)
