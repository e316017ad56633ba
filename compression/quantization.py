"""Weight storage dtypes for artifacts: fp32, fp16, and int8 with a scale granularity chosen per tensor
(docs/design.md §5).

int8 is symmetric. A tensor is viewed as a matrix W (R × C): a matrix as (shape[0], the rest), a
vector as one row (1 × n). Its scales follow one axis a ∈ {0 (rows), 1 (columns)} in groups of g
consecutive rows or columns; with k = ⌈R/g⌉ (a = 0) or ⌈C/g⌉ (a = 1) scales,

    s_i = max_{(r, c) in group i} |W_rc| / 127,    q_rc = round(W_rc / s_i) ∈ [−127, 127],    Ŵ_rc = q_rc · s_i

(a group whose entries are all zero gets s = 1). (a, g) = (0, 1) is per row (per output channel, the
only layout before granularities were chosen; an int8 table entry without them means it), (1, 1) per
column, (0, R) one scale for the tensor. The codes cost R·C bytes whatever the layout; the scales
cost 4k. `encode_tensor` picks, among rows and columns in groups of 1, 2, 4, …, and the whole axis,
the layout with the fewest scales whose relative error e = ‖Ŵ − W‖_F / ‖W‖_F is at most
ERROR_SLACK × max(e_row, E_UNIFORM): at most one bit of precision worse than per row (e_row, the
per-row layout's error) or than int8 on values spread uniformly over [−m, m] (E_UNIFORM = 1/254:
rounding error m/127/√12 against an RMS of m/√3), whichever is larger. The second term matters only
where per-row scales are nearly exact, e.g. rows of one entry, each its own scale. The bound is on
the Frobenius error because that is what reaches a layer's output: ‖ΔW x‖² averages ‖ΔW‖²_F·‖x‖²/C
over isotropic x (a row far smaller than the others may lose relative precision; its absolute error
stays within its group's step). For a low-rank factor (rows of a few entries) per-row scales cost 4
bytes for every 1–16 bytes of codes; a few column or row-group scales keep the error within the
bound at a fraction of those bytes.

Scalars (0-d) stay fp32: a 1-byte code with a 4-byte scale saves nothing. SupportNet's non-negative
weights are stored raw (before softplus), so any dequantized value still maps to a non-negative
weight: quantization cannot break the convexity guarantee.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

STORAGE_DTYPES = ("fp32", "fp16", "int8")  # what model weights may be stored as
# exact integer arrays (codes, ids)
RAW_DTYPES: dict[str, np.dtype] = {"uint8": np.dtype("u1"), "int64": np.dtype("<i8")}
_NUMPY: dict[str, np.dtype] = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2"), "int8": np.dtype("i1"), **RAW_DTYPES}
CONTAINER_DTYPES = tuple(_NUMPY)


ERROR_SLACK = 2.0  # an int8 layout may have at most this × the reference relative error (one bit)
E_UNIFORM = 1.0 / 254.0  # int8's relative RMS error on values uniform over [−m, m] with the scale m/127
ROW, COLUMN = 0, 1  # the axis int8 scales follow


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor's bytes: `data` in `dtype`, plus for int8 fp32 `scales` along `scale_axis` in groups of
    `scale_group`."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes
    scales: bytes = b""
    scale_axis: int = ROW
    scale_group: int = 1


def numpy_dtype(storage: str) -> np.dtype:
    return _NUMPY[storage]


def storage_for(array: np.ndarray, requested: str) -> str:
    """The dtype a tensor is actually stored in when `requested` is asked for."""
    if requested not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {requested!r}; expected one of {STORAGE_DTYPES}")
    return "fp32" if requested == "int8" and array.ndim < 1 else requested


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (R, C) matrix an int8 tensor's scales refer to: (shape[0], the rest), a vector as one row."""
    if len(shape) >= 2:
        return shape[0], prod(shape[1:])
    return 1, prod(shape)


def scale_count(shape: tuple[int, ...], axis: int, group: int) -> int:
    """k = ⌈(R or C) / g⌉: how many scales an int8 tensor of `shape` has along `axis` in groups of `group`."""
    return -(-matrix_shape(shape)[axis] // group)


def _expand(scales: np.ndarray, matrix: tuple[int, int], axis: int, group: int) -> np.ndarray:
    """Each group's scale repeated over its rows (axis 0, as R × 1) or its columns (axis 1, as 1 × C)."""
    per_line = np.repeat(scales, group)[:matrix[axis]]
    return per_line[:, None] if axis == ROW else per_line[None, :]


def _quantize(matrix: np.ndarray, axis: int, group: int) -> tuple[np.ndarray, np.ndarray, float]:
    """int8 codes, scales and squared error ‖Ŵ − W‖²_F of `matrix` for one layout."""
    lines = np.abs(matrix).max(axis=1 - axis) if matrix.size else np.zeros(matrix.shape[axis], np.float32)
    padded = np.zeros(-(-len(lines) // group) * group, np.float32)
    padded[:len(lines)] = lines
    scales = padded.reshape(-1, group).max(axis=1) / np.float32(127.0)
    scales[scales == 0] = 1.0
    expanded = _expand(scales, matrix.shape, axis, group)
    codes = np.clip(np.rint(matrix / expanded), -127, 127).astype(np.int8)
    error = float(np.square(codes * expanded - matrix, dtype=np.float64).sum())
    return codes, scales.astype("<f4"), error


def _layouts(matrix: tuple[int, ...]) -> list[tuple[int, int]]:
    """Candidate (axis, group) layouts: groups of 1, 2, 4, … and the whole axis, along rows and columns."""
    layouts = []
    for axis in (ROW, COLUMN):
        length, group = max(matrix[axis], 1), 1
        while group < length:
            layouts.append((axis, group))
            group *= 2
        layouts.append((axis, length))
    return layouts


def encode_tensor(array: np.ndarray, requested: str) -> EncodedTensor:
    """Store `array` as `requested`; for int8 with the fewest scales whose error is within the bound above."""
    array = np.asarray(array, dtype=np.float32, order="C")  # keeps 0-d scalars 0-d
    storage = storage_for(array, requested)
    if storage != "int8":
        return EncodedTensor(storage, array.shape, array.astype(numpy_dtype(storage)).tobytes())
    matrix = array.reshape(matrix_shape(array.shape))
    codes, scales, row_error = _quantize(matrix, ROW, 1)
    total = float(np.square(matrix, dtype=np.float64).sum())
    bound = ERROR_SLACK ** 2 * max(row_error, E_UNIFORM ** 2 * total)  # on squared errors
    best = (ROW, 1, codes, scales)
    for axis, group in _layouts(matrix.shape):
        if scale_count(array.shape, axis, group) >= len(best[3]):
            continue
        candidate = _quantize(matrix, axis, group)
        if candidate[2] <= bound:
            best = (axis, group, candidate[0], candidate[1])
    axis, group, codes, scales = best
    return EncodedTensor("int8", array.shape, codes.tobytes(), scales.tobytes(), axis, group)


def encode_exact(array: np.ndarray) -> EncodedTensor:
    """Store an integer array (uint8 codes, int64 ids) or a float32 array bit for bit."""
    for name, dtype in {**RAW_DTYPES, "fp32": _NUMPY["fp32"]}.items():
        if np.asarray(array).dtype == dtype.newbyteorder("="):
            return EncodedTensor(name, np.shape(array), np.asarray(array, dtype=dtype, order="C").tobytes())
    raise ValueError(f"no exact storage for dtype {np.asarray(array).dtype}")


def decode_tensor(dtype: str, shape: tuple[int, ...], data: bytes, scales: bytes = b"",
                  scale_axis: int = ROW, scale_group: int = 1) -> np.ndarray:
    """The float32 (or exact integer) array; int8 codes times their scales (sizes checked by the reader)."""
    if dtype in RAW_DTYPES:
        return np.frombuffer(data, dtype=numpy_dtype(dtype)).reshape(shape).copy()
    values = np.frombuffer(data, dtype=numpy_dtype(dtype)).astype(np.float32)
    if dtype == "int8":
        matrix = matrix_shape(shape)
        values = values.reshape(matrix) * _expand(np.frombuffer(scales, dtype="<f4"), matrix, scale_axis, scale_group)
    return values.reshape(shape)
