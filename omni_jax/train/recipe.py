"""Training recipes: a JSON file of known keys (an unknown key is an error), `--set key=value` overrides.

    recipe = Recipe.load("train/af3-tiny.json", overrides=["steps=20", "mesh.data=2"])

Relative paths (model, train_data, eval_data, output_dir) are taken from the recipe file's folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from omni_jax.sharding import MESH_AXES
from omni_jax.train.data import DEFAULT_BUCKETS
from omni_jax.train.lora import LoraConfig

PATH_KEYS = ("model", "train_data", "eval_data", "output_dir")


@dataclasses.dataclass(frozen=True)
class Recipe:
    model: str  # an HF folder or its omni_jax conversion
    train_data: str  # JSON Lines manifest
    output_dir: str
    steps: int
    batch_size: int  # global examples per optimizer step
    learning_rate: float
    eval_data: str | None = None
    eval_every: int = 0  # optimizer steps between evaluations (0: only at the end, when eval_data is set)
    grad_accum: int = 1  # micro-batches per step (batch_size / grad_accum rows each)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    freeze: tuple[str, ...] = ()  # parameter-path patterns (fnmatch), e.g. "encoder/*"
    mesh: tuple[tuple[str, int], ...] = ()  # mesh axis -> size (default: data over every device)
    compute_dtype: str = "float32"
    remat: str | None = None  # a jax.checkpoint_policies name for the decoder layer scan
    length_buckets: tuple[int, ...] = DEFAULT_BUCKETS
    router_aux_loss_coef: float | None = None  # None: the checkpoint's (0 unless output_router_logits)
    log_every: int = 1  # steps between TensorBoard / progress-bar updates (metrics.jsonl: every step)
    lora: LoraConfig | None = None  # {"rank", "alpha", "targets"}: adapters train, the decoder freezes

    def __post_init__(self):
        problems = []
        for key in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                problems.append(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if isinstance(self.batch_size, int) and isinstance(self.grad_accum, int) and self.grad_accum >= 1:
            if self.batch_size % self.grad_accum:
                problems.append(
                    f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}"
                )
        if bad := [k for k, _ in self.mesh if k not in MESH_AXES]:
            problems.append(f"mesh axes {bad} not in {MESH_AXES}")
        if problems:
            raise ValueError("recipe: " + "; ".join(problems))

    @property
    def mesh_shape(self) -> dict[str, int]:
        return dict(self.mesh)

    @classmethod
    def from_dict(cls, raw: dict, base: Path = Path(".")) -> Recipe:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if unknown := sorted(set(raw) - set(fields)):
            raise ValueError(f"recipe: unknown keys {unknown}; known keys: {sorted(fields)}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        if missing := [k for k in required if k not in raw]:
            raise ValueError(f"recipe: missing keys {missing}")
        values = dict(raw)
        for key in PATH_KEYS:
            if values.get(key) is not None:
                values[key] = str((base / values[key]).expanduser())
        if "mesh" in values:
            if not isinstance(values["mesh"], dict):
                raise ValueError(f"recipe: mesh must be an object of axis -> size, got {values['mesh']!r}")
            values["mesh"] = tuple(values["mesh"].items())
        if values.get("lora") is not None:
            values["lora"] = LoraConfig.from_dict(values["lora"])
        for key in ("freeze", "length_buckets"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def load(cls, path, overrides: list[str] = ()) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"recipe not found: {path}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"recipe {path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"recipe {path}: expected a JSON object")
        for item in overrides:
            apply_override(raw, item)
        return cls.from_dict(raw, path.parent)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["mesh"] = dict(self.mesh)
        return out


def apply_override(raw: dict, item: str) -> None:
    """`key=value` (value parsed as JSON, else a string); `mesh.data=2` sets one mesh axis."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects key=value, got {item!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if key.startswith("mesh."):
        raw.setdefault("mesh", {})[key[5:]] = value
    else:
        raw[key] = value
