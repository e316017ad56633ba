"""Load and check the vector files the commands take: `.npy`, 2-D, float16/32/64, finite.

Arrays are read with `allow_pickle=False` (object arrays are refused, never unpickled) and
returned as contiguous float32, the dtype all computation uses.
"""
from __future__ import annotations

import json
import os
import stat
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import InputError

ACCEPTED_DTYPES = (np.float16, np.float32, np.float64)
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def regular_file(path: str | Path, what: str) -> Path:
    """`path` when it is a regular file (after symbolic links); otherwise InputError saying what it is: missing,
    a link to nothing, a directory, a FIFO, a device, ... (never opened: a FIFO would block the read)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(
                f"{what}: {path} is a symbolic link to {os.readlink(path)}, which does not exist") from None
        raise InputError(f"{what}: no such file: {path}") from None
    except OSError as exc:
        raise InputError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
        raise InputError(f"{what}: {path} is {kind}, not a regular file")
    return path


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
    what = what or str(path)
    path = regular_file(path, what)
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


def load_ids(path: str | Path) -> list[Any]:
    """Point ids from a `.npy` array (integers or strings, never pickled) or a text file, one id a line."""
    path = regular_file(path, "ids")
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"ids: not a plain .npy array of integers or strings ({exc})") from None
        if array.ndim != 1 or array.dtype.kind not in "iuU":
            raise InputError(f"ids: expected a 1-D array of integers or strings, got {array.dtype} {array.shape}")
        return array.tolist()
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"ids: cannot read {path} ({exc})") from None


def load_payloads(path: str | Path) -> list[dict[str, Any] | None]:
    """Payloads from a JSONL file: one JSON object (or null) per line; blank lines are skipped. Every error
    names the file's line (1-based), whatever line of the JSON parser's own count it came from."""
    path = regular_file(path, "payload")
    try:
        with path.open("rb") as lines:
            return [_payload(raw, number) for number, raw in enumerate(lines, start=1) if raw.strip()]
    except OSError as exc:
        raise InputError(f"payload: cannot read {path} ({exc.strerror or exc})") from None


def _payload(raw: bytes, number: int) -> dict[str, Any] | None:
    """The payload on line `number`: a JSON object or null, with no NaN or infinity (Qdrant stores neither)."""
    def refuse(constant: str) -> None:
        raise InputError(f"payload: line {number} holds {constant}, which a payload cannot (JSON has no such number)")

    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=refuse)
    except UnicodeDecodeError:
        raise InputError(f"payload: line {number} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:  # its line and column count within this one line
        raise InputError(f"payload: line {number} is not valid JSON ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"payload: line {number} nests too deeply to parse") from None
    if value is not None and not isinstance(value, dict):
        raise InputError(f"payload: line {number} is not a JSON object or null")
    return value
