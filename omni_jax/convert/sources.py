"""Streaming readers for HF checkpoint folders: safetensors (single, or sharded with an index) and
pytorch_model*.bin (through torch with mmap). Headers are read up front; tensors one at a time, on demand.
Safetensors files are parsed and read by the `safetensors` library (`safe_open`); a CTranslate2 Whisper folder
(`model.bin`, omni_jax.convert.ctranslate2) reads as the HF `WhisperForConditionalGeneration` keys.

Opening a folder never raises for a bad file: every problem (corrupt or truncated file, an index naming a
missing shard, an unsupported dtype) is collected in `Source.problems`, naming the file and key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import ml_dtypes  # also registers np.dtype("bfloat16"), which safe_open(framework="numpy") asks for
import numpy as np
from safetensors import SafetensorError, safe_open

from omni_jax.convert import ctranslate2

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
# safe_open's messages for a file whose size disagrees with its header (it checks at open, before any read)
SIZE_ERRORS = ("not fully covered", "invalid header length", "header too small")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    key: str
    file: str
    shape: tuple[int, ...]
    dtype: np.dtype | None  # None: unsupported (see dtype_name)
    dtype_name: str


class Source:
    """The tensors of one HF checkpoint folder, by key."""

    def __init__(self, folder: Path, files: list[str]):
        self.folder = folder
        self.files = files
        self.tensors: dict[str, TensorInfo] = {}
        self.problems: list[str] = []

    def _add(self, info: TensorInfo) -> None:
        if info.dtype is None:
            self.problems.append(
                f"{info.file}: unsupported dtype {info.dtype_name} for {info.key!r} "
                f"(supported: {', '.join(SAFETENSORS_DTYPES)})"
            )
        if info.key in self.tensors:
            self.problems.append(f"{info.file}: key {info.key!r} also in {self.tensors[info.key].file}")
        self.tensors[info.key] = info

    def read(self, key: str) -> np.ndarray:
        raise NotImplementedError


class SafetensorsSource(Source):
    """Reads through safe_open, reopened per tensor: each read copies only its bytes out of the mmap and
    unmaps the file again, so only the tensor in hand stays resident."""

    def __init__(self, folder: Path, files: list[str], index: dict[str, str] | None = None):
        super().__init__(folder, files)
        for name in files:
            self._scan(name)
        if index is not None:
            self._check_index(index)

    def _scan(self, name: str) -> None:
        try:
            with safe_open(self.folder / name, framework="numpy") as f:
                infos = [_info(name, key, f.get_slice(key)) for key in f.keys()]
        except SafetensorError as e:
            why = str(e).removeprefix("Error while deserializing header: ")
            truncated = any(m in why for m in SIZE_ERRORS)
            kind = "truncated or corrupt" if truncated else "corrupt safetensors header"
            self.problems.append(f"{name}: {kind} ({why})")
            return
        except OSError as e:
            self.problems.append(f"{name}: cannot read ({e})")
            return
        for info in infos:
            self._add(info)

    def _check_index(self, index: dict[str, str]) -> None:
        missing_files = sorted({f for f in index.values() if not (self.folder / f).is_file()})
        for f in missing_files:
            keys = sorted(k for k, v in index.items() if v == f)
            self.problems.append(f"index names missing shard {f!r} ({len(keys)} keys, e.g. {keys[0]!r})")
        for key, f in index.items():
            if f not in missing_files and key not in self.tensors:
                self.problems.append(f"{f}: key {key!r} listed in the index is absent from the shard")

    def read(self, key: str) -> np.ndarray:
        with safe_open(self.folder / self.tensors[key].file, framework="numpy") as f:
            return f.get_tensor(key)

    def read_slice(self, key: str, index: tuple) -> np.ndarray:
        """tensor[index] (slices and ints), copying only the bytes the slice spans."""
        with safe_open(self.folder / self.tensors[key].file, framework="numpy") as f:
            return f.get_slice(key)[index]


class TorchBinSource(Source):
    """pytorch_model*.bin through torch.load(mmap=True): tensors stay on disk until read."""

    def __init__(self, folder: Path, files: list[str], index: dict[str, str] | None = None):
        super().__init__(folder, files)
        self.state: dict[str, Any] = {}
        try:
            import torch
        except ImportError:
            self.problems.append(
                f"{files[0]}: reading pytorch_model*.bin needs torch: pip install 'omni_jax[torch]' "
                "(or convert the folder to safetensors first)"
            )
            return
        for name in files:
            try:
                state = torch.load(self.folder / name, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:  # noqa: BLE001 - any failure of torch.load means a corrupt file
                self.problems.append(f"{name}: cannot read ({type(e).__name__}: {e})")
                continue
            for key, t in state.items():
                self.state[key] = t
                self._add(TensorInfo(key, name, tuple(t.shape), *_torch_dtype(t.dtype)))
        if index is not None:
            missing = sorted({f for f in index.values() if not (self.folder / f).is_file()})
            self.problems += [f"index names missing shard {f!r}" for f in missing]

    def read(self, key: str) -> np.ndarray:
        from omni_jax.convert.keymap import to_numpy

        return to_numpy(self.state[key])


class CTranslate2Source(Source):
    """A CTranslate2 Whisper `model.bin`, read whole (fp16 on disk, float32 here) under the hub's HF keys."""

    def __init__(self, folder: Path):
        super().__init__(folder, ["model.bin"])
        try:
            state = ctranslate2.whisper_state_dict(ctranslate2.read_model_bin(folder / "model.bin"))
        except ValueError as e:
            self.problems.append(f"model.bin: {e}")
            state = {}
        self.state = {f"model.{k}": v for k, v in state.items()}
        for key, array in self.state.items():
            self._add(TensorInfo(key, "model.bin", array.shape, array.dtype, DTYPE_NAMES[array.dtype]))

    def read(self, key: str) -> np.ndarray:
        return self.state[key]


def open_source(folder: str | os.PathLike) -> Source:
    """The weights of an HF folder: sharded or single safetensors, else pytorch_model*.bin; or of a
    CTranslate2 Whisper folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory")
    if ctranslate2.is_ctranslate2_dir(folder):
        return CTranslate2Source(folder)
    for cls, suffix in ((SafetensorsSource, ".safetensors"), (TorchBinSource, ".bin")):
        indexes = sorted(folder.glob(f"*{suffix}.index.json"))
        if indexes:
            index = _read_index(indexes[0])
            files = sorted(set(index.values()))
            return cls(folder, [f for f in files if (folder / f).is_file()], index)
        files = sorted(p.name for p in folder.glob(f"*{suffix}") if p.is_file())
        if files:
            return cls(folder, files)
    raise ValueError(
        f"{folder}: no weights found (expected model.safetensors, *.safetensors with "
        "model.safetensors.index.json, or pytorch_model*.bin)"
    )


def _read_index(path: Path) -> dict[str, str]:
    try:
        return dict(json.loads(path.read_text())["weight_map"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: corrupt index ({type(e).__name__}: {e})") from e


def _info(name: str, key: str, tensor: Any) -> TensorInfo:
    """The TensorInfo of one safe_open slice (shape and dtype, read from the header only)."""
    return TensorInfo(key, name, tuple(tensor.get_shape()), *_dtype(tensor.get_dtype()))


def _dtype(name: str) -> tuple[np.dtype | None, str]:
    return SAFETENSORS_DTYPES.get(name), name


def _torch_dtype(dtype: Any) -> tuple[np.dtype | None, str]:
    names = {"torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16"}
    name = names.get(str(dtype), str(dtype).removeprefix("torch."))
    return _dtype(name)
