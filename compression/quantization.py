"""Weight storage dtypes for artifacts: fp32, fp16, and int8 with per-output-channel scales.

int8 (symmetric, per output channel = per row of a weight matrix):

    scale_r = max_j |W_rj| / 127,    q_rj = round(W_rj / scale_r) ∈ [−127, 127],    Ŵ_rj = q_rj · scale_r

Only matrices (ndim ≥ 2) are quantized to int8; vectors (biases, the diagonal skip) stay fp32,
where per-channel scales would save nothing. SupportNet's non-negative weights are stored raw
(before softplus), so any dequantized value still maps to a non-negative weight: quantization
cannot break the convexity guarantee.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STORAGE_DTYPES = ("fp32", "fp16", "int8")  # what model weights may be stored as
RAW_DTYPES: dict[str, np.dtype] = {"uint8": np.dtype("u1"), "int64": np.dtype("<i8")}  # exact integer arrays (codes, ids)
_NUMPY: dict[str, np.dtype] = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2"), "int8": np.dtype("i1"), **RAW_DTYPES}
CONTAINER_DTYPES = tuple(_NUMPY)


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor's bytes: `data` in `dtype`, plus per-row fp32 `scales` for int8."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes
    scales: bytes = b""


def numpy_dtype(storage: str) -> np.dtype:
    return _NUMPY[storage]


def storage_for(array: np.ndarray, requested: str) -> str:
    """The dtype a tensor is actually stored in when `requested` is asked for."""
    if requested not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {requested!r}; expected one of {STORAGE_DTYPES}")
    return "fp32" if requested == "int8" and array.ndim < 2 else requested


def encode_tensor(array: np.ndarray, requested: str) -> EncodedTensor:
    array = np.asarray(array, dtype=np.float32, order="C")  # keeps 0-d scalars 0-d
    storage = storage_for(array, requested)
    if storage != "int8":
        return EncodedTensor(storage, array.shape, array.astype(numpy_dtype(storage)).tobytes())
    rows = array.reshape(array.shape[0], -1)
    scales = np.abs(rows).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint(rows / scales[:, None]), -127, 127).astype(np.int8)
    return EncodedTensor("int8", array.shape, codes.tobytes(), scales.astype("<f4").tobytes())


def encode_exact(array: np.ndarray) -> EncodedTensor:
    """Store an integer array (uint8 codes, int64 ids) or a float32 array bit for bit."""
    for name, dtype in {**RAW_DTYPES, "fp32": _NUMPY["fp32"]}.items():
        if np.asarray(array).dtype == dtype.newbyteorder("="):
            return EncodedTensor(name, np.shape(array), np.asarray(array, dtype=dtype, order="C").tobytes())
    raise ValueError(f"no exact storage for dtype {np.asarray(array).dtype}")


def decode_tensor(dtype: str, shape: tuple[int, ...], data: bytes, scales: bytes = b"") -> np.ndarray:
    if dtype in RAW_DTYPES:
        return np.frombuffer(data, dtype=numpy_dtype(dtype)).reshape(shape).copy()
    values = np.frombuffer(data, dtype=numpy_dtype(dtype)).astype(np.float32)
    if dtype == "int8":
        values = values.reshape(shape[0], -1) * np.frombuffer(scales, dtype="<f4")[:, None]
    return values.reshape(shape)
