"""What the family pipelines share: loading a family's checkpoint, the decode layout for the backend,
generation through the family's system module, decoding."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np

from omni_jax import validation
from omni_jax.convert.parts import CheckpointMap, find_map
from omni_jax.convert.plan import load_params, read_hf_config
from omni_jax.inference.sampling import GREEDY, Sampling
from omni_jax.models import decoder


def load_checkpoint(
    path, maps: Collection[CheckpointMap], system: ModuleType, config_cls: Any, dtype=None
) -> tuple[Path, dict, Any, dict]:
    """(folder, its config.json, `config_cls.from_hf` of it, params) of an HF folder or its omni_jax
    conversion read through the family's `maps`; an error when weights of the system's parts are missing."""
    path = validation.folder("checkpoint folder", path)
    hf_config = read_hf_config(path)
    cmap = find_map(maps, hf_config, f"{path}/config.json")
    config = config_cls.from_hf(hf_config)
    _, params = load_params(path, cmap, dtype=validation.float_dtype("dtype", dtype))
    if missing := [name for name in system.param_specs(config) if name not in params]:
        raise ValueError(f"{path}: the checkpoint has no weights for {missing}")
    return path, hf_config, config, params


def decode_layout(params: dict, config: decoder.Config) -> dict:
    """The fastest correct decoder layout for the backend: on a single CPU device, `decoder.cpu_layout`
    (unstacked layers, packed kernels); elsewhere the stacked parameters as they are."""
    return decoder.cpu_layout(params, config) if on_one_cpu(params) else params


def on_one_cpu(params: dict) -> bool:
    """Every leaf on one CPU device: where the CPU layouts (unstacked layers, packed kernels) pay off."""
    if jax.default_backend() != "cpu":
        return False
    return all(len(leaf.sharding.device_set) == 1 for leaf in jax.tree.leaves(params))


class BasePipeline:
    """A loaded checkpoint: config, params, processor and the EOS / pad ids. A subclass sets `system`, the
    family's system module (`generate` and `stream` with the params, config, inputs and keyword arguments of
    omni_jax.families.audioflamingo3.system), and defines `prepare`."""

    system: ModuleType
    input_key = "input_ids"  # the key every `prepare` output holds

    def __init__(self, config: Any, params: dict, processor: Any, eos_ids: tuple[int, ...], pad_id: int):
        self.config, self.params, self.processor = config, params, processor
        self.eos_ids, self.pad_id = eos_ids, pad_id

    def _options(self, inputs: dict, max_new_tokens: int, sampling: Sampling, seed: int) -> dict:
        """The loop's keyword arguments, each checked (types, ranges) before anything runs."""
        if not isinstance(inputs, dict) or self.input_key not in inputs:
            raise TypeError(
                f"inputs must be the dict pipe.prepare returns (with {self.input_key}), "
                f"got {type(inputs).__name__}"
            )
        if not isinstance(sampling, Sampling):
            raise TypeError(f"sampling must be an omni_jax Sampling, got {type(sampling).__name__}")
        return dict(
            max_new_tokens=self._max_new_tokens(max_new_tokens),
            sampling=sampling,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            seed=validation.integer("seed", seed),
        )

    @staticmethod
    def _max_new_tokens(value: Any) -> int | None:
        return validation.integer("max_new_tokens", value, minimum=1)

    def generate(
        self, inputs: dict, *, max_new_tokens: int, sampling: Sampling = GREEDY, seed: int = 0
    ) -> np.ndarray:
        """New token ids b n (finished rows padded with the pad id)."""
        options = self._options(inputs, max_new_tokens, sampling, seed)
        return np.asarray(self.system.generate(self.params, self.config, inputs, **options))

    def stream(
        self, inputs: dict, *, max_new_tokens: int, sampling: Sampling = GREEDY, seed: int = 0
    ) -> Iterator[np.ndarray]:
        """Each step's tokens (b,) as they are chosen."""
        options = self._options(inputs, max_new_tokens, sampling, seed)
        yield from self.system.stream(self.params, self.config, inputs, **options)

    def decode(self, ids) -> list[str]:
        """Text of each row up to its first EOS, special tokens dropped."""
        rows = []
        for row in np.asarray(ids):
            end = np.flatnonzero(np.isin(row, self.eos_ids))
            rows.append(row[: end[0]] if len(end) else row)
        return self.processor.batch_decode(rows, skip_special_tokens=True)
