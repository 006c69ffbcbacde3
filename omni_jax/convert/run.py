"""HF folder -> JAX folder and back, one parameter at a time, validated before any tensor is read; the
model_type of the folder picks its checkpoint map from the family registry."""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import sys
import time
from pathlib import Path

import numpy as np

from omni_jax import validation
from omni_jax.convert import checkpoint as ckpt
from omni_jax.convert import ctranslate2
from omni_jax.convert.keymap import export_targets, hf_shape
from omni_jax.convert.plan import open_jax, param_dtypes, plan_hf
from omni_jax.convert.sources import CTranslate2Source, Source
from omni_jax.families.registry import checkpoint_map

FORMATS = ("orbax", "safetensors")
DTYPES = ("float32", "bfloat16")


def to_jax(
    src,
    dst,
    *,
    dtype: str | None = None,
    fmt: str = "safetensors",
    overwrite: bool = False,
    quiet: bool = True,
) -> dict:
    """Convert the HF folder `src` to our folder `dst` (written atomically); returns the manifest."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; supported: {DTYPES}")
    src, dst = validation.folder("source folder", src), validation.path("destination", dst)
    cmap = checkpoint_map(src)
    config, source, plan = plan_hf(src, cmap)
    dtypes = param_dtypes(plan, source, dtype)
    total = sum(int(np.prod(s.shape)) * dtypes[p].itemsize for p, s in plan.specs.items())
    total += sum(_nbytes(source.tensors[k]) for k in plan.passthrough)
    progress = Progress(total, f"to-jax {dst.name}", quiet)
    with concurrent.futures.ThreadPoolExecutor(1) as pool, ckpt.atomic_dir(dst, overwrite) as tmp:
        hashes = pool.submit(lambda: [ckpt.file_record(src / f) for f in source.files])
        ckpt.copy_side_files(src, tmp)
        if isinstance(source, CTranslate2Source):
            ctranslate2.write_hf_configs(src, tmp)
        entries = [(path, plan.specs[path].shape, dtypes[path]) for path in plan.specs]
        writer = (
            ckpt.SafetensorsWriter(tmp, ckpt.PARAMS, entries)
            if fmt == "safetensors"
            else ckpt.OrbaxWriter(tmp)
        )
        for path in plan.specs:
            array = plan.build(path, source.read, dtypes[path])
            writer.write(path, array)
            progress(array.nbytes)
            del array
        files = writer.close()
        _copy_tensors(source, plan.passthrough, tmp, ckpt.PASSTHROUGH, progress)
        manifest = {
            "omni_jax_version": importlib.metadata.version("omni_jax"),
            "model_type": cmap.model_type,
            "parts": [name for name, _ in config.parts],
            "format": fmt,
            "dtype": dtype or "as source",
            "files": files,
            "params": {
                p: {"shape": list(s), "dtype": dtypes[p].name}
                for p, (_, s, _) in zip(plan.specs, entries, strict=True)
            },
            "passthrough": sorted(plan.passthrough),
            "source": {"path": str(src.resolve()), "files": hashes.result()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        ckpt.write_manifest(tmp, manifest)
    progress.close()
    return manifest


def _copy_tensors(source: Source, keys: list[str], folder: Path, stem: str, progress) -> None:
    if not keys:
        return
    writer = ckpt.SafetensorsWriter(
        folder, stem, [(k, source.tensors[k].shape, source.tensors[k].dtype) for k in keys]
    )
    for key in keys:
        array = source.read(key)
        writer.write(key, array)
        progress(array.nbytes)
    writer.close()


def to_hf(src, dst, *, overwrite: bool = False, quiet: bool = True) -> list[str]:
    """Convert our folder `src` back to an HF folder `dst` in the hub layout; returns the weight files."""
    src, dst = validation.folder("source folder", src), validation.path("destination", dst)
    cmap = checkpoint_map(src)
    config, checkpoint, _ = open_jax(src, cmap)
    rules = cmap.rules(config)
    exports = {p: export_targets(rules, p, shape) for p, (shape, _) in checkpoint.params.items()}
    entries = [
        (k, hf_shape(t, checkpoint.params[p][0]), checkpoint.params[p][1])
        for p, ex in exports.items()
        for k, t in ex
    ]
    passthrough = checkpoint.passthrough
    if passthrough is not None:
        entries += [(k, info.shape, info.dtype) for k, info in passthrough.tensors.items()]
    progress = Progress(
        sum(int(np.prod(s)) * np.dtype(d).itemsize for _, s, d in entries), f"to-hf {dst.name}", quiet
    )
    with ckpt.atomic_dir(dst, overwrite) as tmp:
        ckpt.copy_side_files(src, tmp)
        writer = ckpt.SafetensorsWriter(tmp, "model", entries, metadata={"format": "pt"})
        for path, targets in exports.items():
            array = checkpoint.read(path)
            for key, target in targets:
                writer.write(key, np.ascontiguousarray(target.transform.to_hf(target.region(array))))
            progress(array.nbytes)
            del array
        for key in passthrough.tensors if passthrough is not None else ():
            array = passthrough.read(key)
            writer.write(key, array)
            progress(array.nbytes)
        files = writer.close()
    progress.close()
    return files


def describe(folder) -> str:
    """The key tree of an HF or omni_jax folder with shapes and dtypes, and how its keys map."""
    return inspect(folder)[0]


def inspect(folder) -> tuple[str, list[str]]:
    """(describe's text, the problems it lists): a folder converts when there are none."""
    folder = validation.folder("checkpoint folder", folder)
    cmap = checkpoint_map(folder)
    if (folder / ckpt.MANIFEST).is_file():
        config, checkpoint, _ = open_jax(folder, cmap)
        rules = cmap.rules(config)
        lines = [
            f"omni_jax checkpoint ({checkpoint.format}), model_type {cmap.model_type}, "
            f"parts {checkpoint.manifest['parts']}"
        ]
        for path, (shape, dtype) in checkpoint.params.items():
            targets = export_targets(rules, path, shape)
            lines.append(f"  {path} {list(shape)} {dtype.name} <- {_keys(k for k, _ in targets)}")
        lines += [f"  passthrough: {len(checkpoint.manifest['passthrough'])} HF tensors kept verbatim"]
        return "\n".join(lines), []
    config, source, plan = plan_hf(folder, cmap, check=False)
    present = [n for n, _ in config.parts]
    absent = [n for n in cmap.optional_parts() if n not in present]
    lines = [
        f"HF checkpoint ({len(source.files)} file(s)), model_type {cmap.model_type}, parts {present}"
        + (f" (optional, absent: {absent})" if absent else "")
    ]
    if cmap.notes:
        lines.append(f"  note: {cmap.notes}")
    for path, pieces in plan.pieces.items():
        info = source.tensors[pieces[0].key]
        spec = plan.specs[path]
        lines.append(
            f"  {_keys(p.key for p in pieces)} {list(info.shape)} {info.dtype_name} -> "
            f"{path} {list(spec.shape)}"
            f" ({pieces[0].target.transform.name})"
        )
    if plan.passthrough:
        lines.append(f"  passthrough (kept verbatim): {_keys(plan.passthrough)}")
    problems = source.problems + cmap.missing_parts(present) + plan.check()
    lines += [f"  PROBLEM: {p}" for p in problems]
    return "\n".join(lines), problems


def _nbytes(info) -> int:
    return int(np.prod(info.shape)) * info.dtype.itemsize


def _keys(keys) -> str:
    keys = list(keys)
    return keys[0] if len(keys) == 1 else f"{keys[0]} ... ({len(keys)} keys)"


class Progress:
    """A one-line progress bar on stderr: bytes done of a total, rate; silent when quiet."""

    def __init__(self, total: int, label: str, quiet: bool = False):
        self.total, self.label, self.quiet = max(total, 1), label, quiet
        self.done, self.start, self.shown = 0, time.perf_counter(), 0.0

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.perf_counter()
        if self.quiet or (now - self.shown < 0.2 and self.done < self.total):
            return
        self.shown = now
        rate = self.done / max(now - self.start, 1e-9) / 1e9
        width = 30
        fill = int(width * min(self.done / self.total, 1.0))
        sys.stderr.write(
            f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] "
            f"{self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB {rate:.2f} GB/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")
