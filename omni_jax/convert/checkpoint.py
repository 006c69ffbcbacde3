"""Checkpoint folders on disk: atomic creation, streaming safetensors and orbax writers, the manifest.

Our JAX folder holds the HF side files (config.json, tokenizer, processor), `omni_jax.json` (manifest),
the parameters (`params/` for orbax; `params.safetensors` or `params-0000i-of-0000n.safetensors` with
`params.safetensors.index.json`, keys being JAX paths), and `passthrough.safetensors`: HF tensors no omni_jax
model uses (kept verbatim so the folder converts back to a complete HF checkpoint).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from omni_jax import validation
from omni_jax.convert.keymap import ConversionError
from omni_jax.convert.sources import DTYPE_NAMES, WEIGHT_SUFFIXES, SafetensorsSource
from omni_jax.nn.params import flatten_paths, set_path

MANIFEST = "omni_jax.json"
PARAMS = "params"
PASSTHROUGH = "passthrough"
MAX_SHARD_BYTES = 4 << 30


@contextlib.contextmanager
def atomic_dir(dst: Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder `.NAME.partial-PID` next to `dst`, renamed to `dst` only when the block completes
    (removed on any exception, KeyboardInterrupt and SystemExit included). Leftovers of dead processes
    (killed by SIGKILL) are cleaned first; a live process's are never touched."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dst)
    if dst.exists() and not overwrite:
        raise ValueError(f"{dst} exists; pass --overwrite to replace it")
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old)
    else:
        tmp.rename(dst)


def clean_stale(dst: Path) -> list[Path]:
    """Remove `.NAME.partial-PID` folders of processes no longer alive; a dead process's `.NAME.old-PID`
    (killed between its two renames) becomes `dst` again when `dst` is absent, else is removed. -> removed."""
    removed = []
    for leftover in sorted(dst.parent.glob(f".{glob.escape(dst.name)}.*-*")):
        kind, _, pid = leftover.name.removeprefix(f".{dst.name}.").rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not dst.exists():
            leftover.rename(dst)
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


# Hand-written: safetensors.save_file takes every tensor in one dict (all in memory at once); this streams.
class SafetensorsWriter:
    """Writes arrays, in an order declared up front, into safetensors shards (with an index if several)."""

    def __init__(
        self,
        folder: Path,
        stem: str,
        entries: list[tuple[str, tuple, np.dtype]],
        metadata=None,
        max_shard_bytes: int = MAX_SHARD_BYTES,
    ):
        self.folder, self.stem, self.metadata = folder, stem, metadata or {}
        self.shards: list[list[tuple[str, tuple, np.dtype]]] = [[]]
        size = 0
        for entry in entries:
            nbytes = _nbytes(entry)
            if self.shards[-1] and size + nbytes > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(entry)
            size += nbytes
        self.order = [(*e, i) for i, shard in enumerate(self.shards) for e in shard]
        self.position = 0
        self.file = None
        self.shard = -1
        self.names = [self.shard_name(i) for i in range(len(self.shards))]

    def shard_name(self, i: int) -> str:
        n = len(self.shards)
        return f"{self.stem}.safetensors" if n == 1 else f"{self.stem}-{i + 1:05d}-of-{n:05d}.safetensors"

    def write(self, name: str, array: np.ndarray) -> None:
        key, shape, dtype, shard = self.order[self.position]
        if (name, tuple(array.shape), np.dtype(array.dtype)) != (key, tuple(shape), np.dtype(dtype)):
            raise ValueError(f"writer expected {key} {shape} {dtype}, got {name} {array.shape} {array.dtype}")
        if shard != self.shard:
            self._open(shard)
        self.file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        self.position += 1

    def _open(self, shard: int) -> None:
        if self.file is not None:
            self.file.close()
        self.shard = shard
        header, offset = {"__metadata__": self.metadata}, 0
        for key, shape, dtype in self.shards[shard]:
            nbytes = _nbytes((key, shape, dtype))
            header[key] = {
                "dtype": DTYPE_NAMES[np.dtype(dtype)],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.file = open(self.folder / self.shard_name(shard), "wb")  # noqa: SIM115 - closed in _open/close
        self.file.write(struct.pack("<Q", len(blob)) + blob)

    def close(self) -> list[str]:
        """Finish the last shard and write the index; the file names written."""
        if self.position != len(self.order):
            raise ValueError(f"writer closed after {self.position} of {len(self.order)} arrays")
        if self.file is not None:
            self.file.close()
        if len(self.shards) > 1:
            weight_map = {key: self.shard_name(i) for i, s in enumerate(self.shards) for key, _, _ in s}
            total = sum(_nbytes(e[:3]) for e in self.order)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / f"{self.stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return self.names


class OrbaxWriter:
    """Writes arrays into an orbax checkpoint (`params/`) by partial saves of groups of up to `group_bytes`
    (an array larger than that is saved alone), so little more than one array is held at a time."""

    def __init__(self, folder: Path, group_bytes: int = 256 << 20):
        self.path, self.group_bytes = folder / PARAMS, group_bytes
        self.pending: dict = {}
        self.pending_bytes = 0

    def write(self, name: str, array: np.ndarray) -> None:
        if self.pending and self.pending_bytes + array.nbytes > self.group_bytes:
            self._flush()
        set_path(self.pending, name, array)
        self.pending_bytes += array.nbytes

    def _flush(self) -> None:
        import orbax.checkpoint.experimental.v1 as ocp

        ocp.partial.save(self.path, self.pending)
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        import orbax.checkpoint.experimental.v1 as ocp

        if self.pending:
            self._flush()
        ocp.partial.finalize(self.path)
        return [PARAMS]


def _nbytes(entry: tuple[str, tuple, np.dtype]) -> int:
    return int(np.prod(entry[1])) * np.dtype(entry[2]).itemsize


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json") or name == MANIFEST


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy every top-level file that is not weights (config, generation config, tokenizer, processor)."""
    copied = []
    for path in sorted(src.iterdir()):
        if path.is_file() and not is_weight_file(path.name):
            shutil.copyfile(path, dst / path.name)  # contents only: new files get umask permissions
            copied.append(path.name)
    return copied


def file_record(path: Path) -> dict[str, Any]:
    """Name, size and sha256 of a source file."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"name": path.name, "size": path.stat().st_size, "sha256": digest}


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder}: no {MANIFEST}; not an omni_jax checkpoint")
    return json.loads(path.read_text())


class JaxCheckpoint:
    """Our folder, read back: the manifest, each parameter's shape and dtype, arrays whole or sharded."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.format = self.manifest["format"]
        self.params = {
            p: (tuple(v["shape"]), np_dtype(v["dtype"])) for p, v in self.manifest["params"].items()
        }
        self.source = _safetensors(self.folder, PARAMS) if self.format == "safetensors" else None
        self.passthrough = _safetensors(self.folder, PASSTHROUGH) if self.manifest["passthrough"] else None

    def read(self, path: str) -> np.ndarray:
        """One parameter as a numpy array."""
        if self.source is not None:
            return self.source.read(path)
        return self._orbax({path: np.empty(*self.params[path])}, path)

    def load(self, shardings: dict[str, Any], dtype: Any = None) -> dict:
        """Every parameter as a jax.Array placed in `shardings[path]`; each device reads only its slice."""
        import jax

        def abstract(path):
            shape, stored = self.params[path]
            return jax.ShapeDtypeStruct(shape, dtype or stored, sharding=shardings[path])

        if self.source is None:
            tree = self._orbax({p: abstract(p) for p in self.params})
            for path, leaf in flatten_paths(tree):
                validation.finite_array(f"{self.folder}: parameter {path}", jax.device_get(leaf))
            return tree
        tree: dict = {}
        for path in self.params:
            spec = abstract(path)
            read = functools.partial(self._read_slice, path, spec.dtype)
            array = jax.make_array_from_callback(spec.shape, spec.sharding, read)
            set_path(tree, path, array)
        return tree

    def _read_slice(self, path: str, dtype: Any, index: tuple) -> np.ndarray:
        array = self.source.read_slice(path, index)
        return validation.finite_array(f"{self.folder}: parameter {path}", array).astype(dtype)

    def _orbax(self, leaves: dict[str, Any], only: str | None = None) -> Any:
        import orbax.checkpoint.experimental.v1 as ocp

        tree: dict = {}
        for path in self.params:
            set_path(tree, path, leaves.get(path, ocp.PLACEHOLDER))
        out = ocp.load(self.folder / PARAMS, tree)
        if only is None:
            return out
        for p in only.split("/"):
            out = out[p]
        return out


def np_dtype(name: str) -> np.dtype:
    """numpy dtype by name, bfloat16 included."""
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, name, None) or name)


def _safetensors(folder: Path, stem: str) -> SafetensorsSource:
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        source = SafetensorsSource(folder, sorted(set(weight_map.values())), weight_map)
    else:
        source = SafetensorsSource(folder, [f"{stem}.safetensors"])
    if source.problems:
        raise ConversionError(source.problems)
    return source
