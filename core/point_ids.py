"""Qdrant point ids as numpy arrays.

A Qdrant point id is an unsigned 64-bit integer or a UUID, and one collection may hold both. A batch
of ids is an **int64 array** when every id is an integer (the common case: cheap, and writable to
`.npy` without pickle), and otherwise a **unicode array of canonical text**: UUIDs in Qdrant's
hyphenated lowercase form, integers in decimal. `to_qdrant_list` turns either back into the ids Qdrant
takes. Result rows a search could not fill are padded with `-1` (int64) or `""` (text); `present`
tells real ids from padding.
"""
from __future__ import annotations

import re
import uuid
from typing import Any, Iterable, Sequence

import numpy as np

INT_PAD = -1
TEXT_PAD = ""
TEXT_DTYPE = np.dtype("<U36")  # a UUID's canonical text; decimal integers fit too (≤ 20 digits)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX_PAIRS = np.frombuffer(b"".join(b"%02x" % byte for byte in range(256)), dtype=np.uint8).reshape(256, 2)
_HEX_POSITIONS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])  # the rest hold the hyphens
_VECTORIZED_FROM = 64  # fewer UUIDs than this are formatted one by one (numpy's per-call cost is not repaid)


def canonical(value: Any) -> int | str:
    """One id as Qdrant stores it: a non-negative int, or a UUID's lowercase hyphenated text."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"invalid point id {value!r}")
    if isinstance(value, (int, np.integer)):
        if not 0 <= int(value) < 2**64:
            raise ValueError(f"point id {value} is outside 0..2**64-1")
        return int(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):  # already canonical: the query path's case
        return str(value)
    text = str(value).strip()
    if text.isdigit():
        return canonical(int(text))
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ValueError(f"invalid point id {value!r}: Qdrant ids are unsigned integers or UUIDs") from None


def as_id_array(values: Iterable[Any], unsigned: bool = False) -> np.ndarray:
    """Ids as int64 when all are integers (< 2**63), else as canonical text. `unsigned`: the ids are known not to
    be negative (an engine's search hits), so integers are not checked for it (a reduction per call)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        if values.size and (values.min() < 0 or (values.dtype.kind == "u" and values.max() >= 2**63)):
            raise ValueError("point ids must be non-negative integers below 2**63 or UUIDs")
        return values.astype(np.int64)
    values = list(values)
    kinds = set(map(type, values))
    if kinds == {int}:  # the common case, without a call per id
        try:
            array = np.array(values, dtype=np.int64)
        except OverflowError:  # an id ≥ 2**63: the general path below
            array = None
        if array is not None and (unsigned or array.min() >= 0):
            return array
    if kinds == {uuid.UUID}:  # a UUID collection's search hits
        return uuid_texts(values)
    ids = [canonical(v) for v in values]
    if all(isinstance(i, int) and i < 2**63 for i in ids):
        return np.array(ids, dtype=np.int64).reshape(len(ids))
    return np.array([str(i) for i in ids], dtype=TEXT_DTYPE).reshape(len(ids))


def uuid_texts(values: Sequence[uuid.UUID]) -> np.ndarray:
    """UUIDs as their canonical text (`str(u)`), as a TEXT_DTYPE array. A search batch returns tens of
    thousands: their 16 bytes each are turned into hex digits in one table lookup rather than one `str` call
    per UUID (0.6 against 1.4 µs an id)."""
    if len(values) < _VECTORIZED_FROM:
        return np.array(list(map(str, values)), dtype=TEXT_DTYPE)
    raw = np.frombuffer(b"".join([u.bytes for u in values]), dtype=np.uint8).reshape(len(values), 16)
    text = np.full((len(values), 36), ord("-"), dtype=np.uint8)
    text[:, _HEX_POSITIONS] = _HEX_PAIRS[raw].reshape(len(values), 32)
    return text.view("S36").reshape(len(values)).astype(TEXT_DTYPE)


def is_text(ids: np.ndarray) -> bool:
    return ids.dtype.kind == "U"


def padding(ids: np.ndarray) -> Any:
    return TEXT_PAD if is_text(ids) else INT_PAD


def present(ids: np.ndarray) -> np.ndarray:
    """Mask of real ids (not padding)."""
    return ids != padding(ids)


def padded(shape: tuple[int, ...], text: bool = False) -> np.ndarray:
    return np.full(shape, TEXT_PAD, dtype=TEXT_DTYPE) if text else np.full(shape, INT_PAD, dtype=np.int64)


def common(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The arrays in one representation: text if any of them is text, else int64."""
    if not any(is_text(a) for a in arrays):
        return [a.astype(np.int64) for a in arrays]
    return [a if is_text(a) else np.where(a == INT_PAD, TEXT_PAD, a.astype(str)).astype(TEXT_DTYPE) for a in arrays]


def concatenate(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(common(arrays)) if arrays else np.empty(0, dtype=np.int64)


def to_qdrant_list(ids: np.ndarray) -> list[int | str | uuid.UUID]:
    """The ids of an id array (already canonical: `as_id_array`) as Qdrant takes them, ints and UUID texts,
    without re-parsing each; typed as the id lists that qdrant-client and Qdrant Edge declare, which are
    invariant `list[int | str | UUID]`."""
    values = ids.tolist()
    if not is_text(ids):
        return values
    return [int(v) if v.isdigit() else v for v in values]


def id_bytes(ids: np.ndarray) -> bytes:
    """A stable byte encoding for hashing: little-endian int64, or the texts NUL-separated."""
    if is_text(ids):
        return "".join(f"{i}\0" for i in ids.tolist()).encode("utf-8")
    return np.ascontiguousarray(ids, dtype="<i8").tobytes()


def encode_for_artifact(ids: np.ndarray) -> tuple[str, np.ndarray]:
    """(tensor name, numeric tensor) for a container that holds numbers only: int64 ids as "ids",
    text ids as "id_text", an (N, 36) uint8 matrix of their ASCII."""
    if not is_text(ids):
        return "ids", ids.astype(np.int64)
    return "id_text", np.frombuffer(ids.astype("S36").tobytes(), dtype=np.uint8).reshape(len(ids), 36)


def decode_from_artifact(tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The inverse of `encode_for_artifact`; KeyError when neither tensor is there."""
    if "ids" in tensors:
        return tensors["ids"].astype(np.int64)
    raw = tensors["id_text"]
    if raw.ndim != 2 or raw.shape[1] != 36 or raw.dtype != np.uint8:
        raise ValueError("id_text must be an (N, 36) uint8 matrix")
    return np.frombuffer(raw.tobytes(), dtype="S36").astype(TEXT_DTYPE)


def all_valid(ids: np.ndarray) -> bool:
    """Whether every element is a usable Qdrant id (for arrays read back from stored state)."""
    if not is_text(ids):
        return bool(ids.size == 0 or ids.min() >= 0)
    try:
        for value in ids.tolist():
            canonical(value)
    except ValueError:
        return False
    return True
