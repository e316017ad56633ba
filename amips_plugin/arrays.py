"""Load and check the vector files the commands take: `.npy`, 2-D, float16/32/64, finite.

Arrays are read with `allow_pickle=False` (object arrays are refused, never unpickled) and
returned as contiguous float32, the dtype all computation uses.
"""
from __future__ import annotations

import os
from math import prod
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


def check_npy_size(path: Path, what: str) -> None:
    """Before anything is allocated: the header's shape × itemsize must equal the bytes after the header.

    A `.npy` header can declare any shape; numpy would allocate it before noticing that the file is
    short. Object arrays and unreadable headers are left to `np.load`, which refuses them.
    """
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            data_bytes = os.fstat(fh.fileno()).st_size - fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return  # not a readable header: np.load says so below
    if dtype.hasobject:
        return
    declared = prod(shape) * dtype.itemsize
    if declared != data_bytes:
        raise InputError(f"{what}: the .npy header declares shape {tuple(shape)} of {dtype} ({declared:,} bytes), "
                         f"the file holds {data_bytes:,} bytes of data")


def load_vectors(path: str | Path, what: str | None = None, dim: int | None = None) -> np.ndarray:
    """Read a `.npy` file of vectors; every failure is an InputError naming the file."""
    path = Path(path)
    what = what or str(path)
    if not path.is_file():
        raise InputError(f"{what}: no such file: {path}")
    check_npy_size(path, what)
    try:
        array = np.load(path, allow_pickle=False, mmap_mode=None)
    except ValueError as exc:  # object arrays, or a pickle posing as .npy
        raise InputError(f"{what}: not a plain numeric .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{what}: not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"{what}: expected a single .npy array, got {type(array).__name__}")
    return check_vectors(array, what, dim)
