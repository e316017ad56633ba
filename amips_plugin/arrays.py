"""Load and check the vector files the commands take: `.npy`, 2-D, float16/32/64, finite.

Arrays are read with `allow_pickle=False` (object arrays are refused, never unpickled) and
returned as contiguous float32, the dtype all computation uses.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

ACCEPTED_DTYPES = (np.float16, np.float32, np.float64)


def check_vectors(array: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """Validate an in-memory (n, d) array of vectors and return it as float32."""
    if array.ndim != 2:
        raise InputError(f"{what}: expected a 2-D array (n, d), got shape {array.shape}")
    if array.dtype.type not in ACCEPTED_DTYPES:
        raise InputError(f"{what}: expected float16/float32/float64 values, got dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{what}: empty array of shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise InputError(f"{what}: dimension {array.shape[1]} does not match the expected {dim}")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise InputError(f"{what}: {bad} row(s) contain NaN or infinite values (after conversion to float32)")
    return out


def load_vectors(path: str | Path, what: str | None = None, dim: int | None = None) -> np.ndarray:
    """Read a `.npy` file of vectors; every failure is an InputError naming the file."""
    path = Path(path)
    what = what or str(path)
    if not path.is_file():
        raise InputError(f"{what}: no such file: {path}")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode=None)
    except ValueError as exc:  # object arrays, or a pickle posing as .npy
        raise InputError(f"{what}: not a plain numeric .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{what}: not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"{what}: expected a single .npy array, got {type(array).__name__}")
    return check_vectors(array, what, dim)
