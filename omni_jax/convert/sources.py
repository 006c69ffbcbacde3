"""Streaming readers for HF checkpoint folders: safetensors (single, or sharded with an index) and
pytorch_model*.bin (through torch with mmap). Headers are read up front; tensors one at a time, on demand.

Opening a folder never raises for a bad file: every problem (corrupt or truncated file, an index naming a
missing shard, an unsupported dtype) is collected in `Source.problems`, naming the file and key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    key: str
    file: str
    shape: tuple[int, ...]
    dtype: np.dtype | None  # None: unsupported (see dtype_name)
    dtype_name: str
    offset: int = 0  # safetensors: absolute byte offset in the file


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
    """Reads tensors with plain positioned reads (no mmap), so only the tensor in hand is resident."""

    def __init__(self, folder: Path, files: list[str], index: dict[str, str] | None = None):
        super().__init__(folder, files)
        for name in files:
            self._scan(name)
        if index is not None:
            self._check_index(index)

    def _scan(self, name: str) -> None:
        path = self.folder / name
        try:
            header = read_safetensors_header(path)
        except ValueError as e:
            self.problems.append(f"{name}: {e}")
            return
        for key, info in header.items():
            self._add(TensorInfo(key, name, tuple(info["shape"]), *_dtype(info["dtype"]), info["offset"]))

    def _check_index(self, index: dict[str, str]) -> None:
        missing_files = sorted({f for f in index.values() if not (self.folder / f).is_file()})
        for f in missing_files:
            keys = sorted(k for k, v in index.items() if v == f)
            self.problems.append(f"index names missing shard {f!r} ({len(keys)} keys, e.g. {keys[0]!r})")
        for key, f in index.items():
            if f not in missing_files and key not in self.tensors:
                self.problems.append(f"{f}: key {key!r} listed in the index is absent from the shard")

    def read(self, key: str) -> np.ndarray:
        info = self.tensors[key]
        count = int(np.prod(info.shape))
        out = np.empty(count * info.dtype.itemsize, np.uint8)
        with open(self.folder / info.file, "rb", buffering=0) as f:
            f.seek(info.offset)
            got = f.readinto(memoryview(out))
        if got != out.size:
            raise ValueError(f"{info.file}: truncated while reading {key!r}")
        return out.view(info.dtype).reshape(info.shape)

    def read_slice(self, key: str, index: tuple) -> np.ndarray:
        """tensor[index], touching only the pages the slice spans."""
        info = self.tensors[key]
        mapped = np.memmap(self.folder / info.file, info.dtype, "r", info.offset, info.shape)
        return np.array(mapped[index])


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


def open_source(folder: str | os.PathLike) -> Source:
    """The weights of an HF folder: sharded or single safetensors, else pytorch_model*.bin."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory")
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


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """{key: {dtype, shape, offset}} of a safetensors file; ValueError if corrupt or truncated."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"truncated or corrupt: {size} bytes, no safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"truncated or corrupt: header of {n} bytes in a file of {size}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise ValueError("corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    out, end = {}, 0
    for key, info in header.items():
        try:
            (begin, stop), dtype_name, shape = (
                info["data_offsets"],
                info["dtype"],
                [int(s) for s in info["shape"]],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"corrupt safetensors header entry {key!r} ({e})") from e
        dtype = SAFETENSORS_DTYPES.get(dtype_name)
        if dtype is not None and stop - begin != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"corrupt: {key!r} spans {stop - begin} bytes for shape {shape} {dtype_name}")
        out[key] = {"dtype": dtype_name, "shape": shape, "offset": 8 + n + begin}
        end = max(end, stop)
    if 8 + n + end > size:
        raise ValueError(f"truncated: {size} bytes, the header needs {8 + n + end}")
    return out


def _read_index(path: Path) -> dict[str, str]:
    try:
        return dict(json.loads(path.read_text())["weight_map"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: corrupt index ({type(e).__name__}: {e})") from e


def _dtype(name: str) -> tuple[np.dtype | None, str]:
    return SAFETENSORS_DTYPES.get(name), name


def _torch_dtype(dtype: Any) -> tuple[np.dtype | None, str]:
    names = {"torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16"}
    name = names.get(str(dtype), str(dtype).removeprefix("torch."))
    return _dtype(name)
