"""The final weights as an omni_jax checkpoint folder (`python -m omni_jax.convert to-hf` turns it into an
HF folder that transformers loads): the base model's folder with the trained parameters written over it.

    write_final(model.path, params, output_dir / "final")   # params: full numpy tree of the trained parts
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from omni_jax.convert import checkpoint as ckpt
from omni_jax.convert import run as convert
from omni_jax.nn.params import flatten_paths


def write_final(base: Path, params: dict, dst: Path) -> Path:
    """Copy `base` (HF folder: converted first; omni_jax folder: as is) to `dst` atomically, with every
    parameter of `params` replacing the base's (cast to the base's dtype) and the others kept."""
    base, dst = Path(base), Path(dst)
    ours = dict(flatten_paths(params))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".export-") as work:
        if not (base / ckpt.MANIFEST).is_file():
            converted = Path(work) / "base"
            convert.to_jax(base, converted, quiet=True)
            base = converted
        source = ckpt.JaxCheckpoint(base)
        if source.format != "safetensors":
            raise ValueError(
                f"{base}: exporting over an orbax-format folder is not supported; use a safetensors one"
            )
        unknown = sorted(set(ours) - set(source.params))
        if unknown:
            raise ValueError(f"trained parameters {unknown[:5]} are not in {base}")
        with ckpt.atomic_dir(dst, overwrite=True) as tmp:
            ckpt.copy_side_files(base, tmp)
            for name in base.iterdir():
                if name.name.startswith(ckpt.PASSTHROUGH):
                    shutil.copy2(name, tmp / name.name)
            entries = [(p, shape, dtype) for p, (shape, dtype) in source.params.items()]
            writer = ckpt.SafetensorsWriter(tmp, ckpt.PARAMS, entries)
            for path, _, dtype in entries:
                array = np.asarray(ours[path]).astype(dtype) if path in ours else source.read(path)
                writer.write(path, array)
            manifest = {**source.manifest, "files": writer.close(), "trained": sorted(ours)}
            ckpt.write_manifest(tmp, manifest)
    return dst
