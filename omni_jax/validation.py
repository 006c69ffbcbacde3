"""The input checks every public entry shares: each raises one clear error that names the argument (or file,
or key) and says what was expected. A leaf module (numpy only), so any layer may import it.

TypeError for a value of the wrong Python type, ValueError for a value out of range; both name `name`.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """`value` as an int: an int or numpy integer (not a bool, not 2.5), at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def finite(name: str, value: Any) -> float:
    """`value` as a finite float (NaN and inf refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)


def path(name: str, value: Any) -> Path:
    """A str / os.PathLike as a Path with `~` expanded."""
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {value!r} ({type(value).__name__})")
    return Path(value).expanduser()


def folder(name: str, value: Any) -> Path:
    """An existing directory (`~` expanded)."""
    p = path(name, value)
    if not p.is_dir():
        raise FileNotFoundError(f"{name}: {p} is not a directory" if p.exists() else f"{name}: {p} not found")
    return p


def float_dtype(name: str, dtype: Any) -> np.dtype | None:
    """None, or a floating numpy dtype (bfloat16 included); integer / bool / complex dtypes refused."""
    if dtype is None:
        return None
    import ml_dtypes  # registers bfloat16 with numpy

    try:
        resolved = np.dtype(getattr(ml_dtypes, dtype, dtype) if isinstance(dtype, str) else dtype)
    except TypeError:
        raise TypeError(f"{name} {dtype!r} is not a dtype") from None
    if resolved.kind != "f" and resolved.name != "bfloat16":
        raise ValueError(f"{name} must be a floating dtype (float32, bfloat16, float16), got {resolved}")
    return resolved


def token_ids(name: str, ids: Any, vocab_size: int) -> np.ndarray:
    """Integer ids (batch, length), each in [0, vocab_size)."""
    if isinstance(ids, str | bytes) or ids is None:
        raise TypeError(f"{name} must be an integer array (batch, length), got {type(ids).__name__}")
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"{name} must be integer (batch, length), got {ids.dtype} {ids.shape}"
            + ("; add a batch axis: ids[None]" if ids.ndim == 1 else "")
        )
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise ValueError(
            f"{name} holds ids outside the vocabulary [0, {vocab_size}): {sorted(set(bad.tolist()))[:5]}"
        )
    return ids


def finite_array(name: str, array: np.ndarray) -> np.ndarray:
    """Raise when a float array holds NaN or inf (host check, one pass)."""
    a = np.asarray(array)
    if a.dtype.kind in "fc" or a.dtype.name == "bfloat16":
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise ValueError(f"{name} contains NaN or inf ({bad} of {a.size} values)")
    return array


def config_keys(where: str, config: Any, keys: tuple[str, ...]) -> dict:
    """A config dict holding every one of `keys` (refused, all missing keys named, instead of defaults)."""
    if not isinstance(config, dict):
        raise TypeError(f"{where} must be a config dict, got {type(config).__name__}")
    if missing := [k for k in keys if config.get(k) is None]:
        raise ValueError(f"{where}: missing required key(s) {missing}")
    return config
