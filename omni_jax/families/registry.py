"""The one model_type table: each family's checkpoint maps, pipeline and parity, one entry per family.

    pipe = load_pipeline("checkpoints/af3")       # by the folder's config.json model_type
    cmap = checkpoint_map("checkpoints/af3")      # its CheckpointMap (omni_jax.convert.parts)

A family is one folder under omni_jax/families/ (checkpoint map, system, processor, pipeline, parity) and one
`Family` below; CONTRIBUTING.md says how to add one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from omni_jax.convert.parts import CheckpointMap, find_map
from omni_jax.convert.plan import read_hf_config
from omni_jax.families.audioflamingo3 import checkpoint as af3_checkpoint
from omni_jax.families.audioflamingo3 import parity as af3_parity
from omni_jax.families.audioflamingo3 import pipeline as af3_pipeline
from omni_jax.families.causal_lm import checkpoint as causal_lm_checkpoint
from omni_jax.families.qwen3_omni import checkpoint as qwen3_omni_checkpoint
from omni_jax.families.qwen3_omni import parity as qwen3_omni_parity
from omni_jax.families.qwen3_omni import pipeline as qwen3_omni_pipeline
from omni_jax.families.whisper import checkpoint as whisper_checkpoint
from omni_jax.families.whisper import parity as whisper_parity
from omni_jax.families.whisper import pipeline as whisper_pipeline
from omni_jax.parity.core import ParityTable


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    maps: tuple[CheckpointMap, ...]  # one per model_type the family reads
    load_pipeline: Callable[..., Any] | None = None  # (path, *, dtype=None) -> Pipeline
    parity: ParityTable = ParityTable({})  # what omni_jax.parity compares, by transformers class

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(m.model_type for m in self.maps)


FAMILIES: tuple[Family, ...] = (
    Family("audioflamingo3", af3_checkpoint.MAPS, af3_pipeline.load, af3_parity.TABLE),
    Family("qwen3_omni", qwen3_omni_checkpoint.MAPS, qwen3_omni_pipeline.load, qwen3_omni_parity.TABLE),
    Family("whisper", whisper_checkpoint.MAPS, whisper_pipeline.load, whisper_parity.TABLE),
    Family("causal_lm", causal_lm_checkpoint.MAPS),
)


def family(path: str | os.PathLike) -> Family:
    """The family of a checkpoint folder (HF or converted), by its config.json."""
    cmap = checkpoint_map(path)
    return next(f for f in FAMILIES if cmap in f.maps)


def checkpoint_map(path: str | os.PathLike) -> CheckpointMap:
    """The CheckpointMap of a checkpoint folder, by its config.json model_type (else architectures)."""
    return find_map([m for f in FAMILIES for m in f.maps], read_hf_config(path), f"{path}/config.json")


def load_pipeline(path: str | os.PathLike, **kwargs: Any):
    """The Pipeline of a checkpoint folder; kwargs go to the family's loader (e.g. dtype)."""
    found = family(path)
    if found.load_pipeline is None:
        with_pipelines = [t for f in FAMILIES if f.load_pipeline for t in f.model_types]
        raise ValueError(
            f"{path}: {found.name} checkpoints have no pipeline yet; pipelines exist for "
            f"{', '.join(with_pipelines)}"
        )
    return found.load_pipeline(path, **kwargs)
