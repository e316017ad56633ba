"""The artifact container: data only — a header and tensors — never code, never pickle (docs/design.md §5).
Models (amips_plugin/model_artifact.py), PQ codes and routers are payloads of their own kind in it.

File layout (all integers little-endian):

    magic      8 bytes   b"\\x89AMIPS\\r\\n"
    version    u32       FORMAT_VERSION (2; version 1 is read too)
    length     u64       byte length of the compressed body
    body       zstd frame of:  u32 header length | header (UTF-8 JSON) | tensor bytes
    checksum   32 bytes  SHA-256 of everything before it

The JSON header (compact: no spaces) holds the architecture ("model"), the tensor table and free-form
metadata (training settings, fingerprint of the training keys, metrics at training time, library
versions). A table entry is the tensor's name, dtype and shape, and for int8 the scales' axis and group
size unless they are per row (absent: per row, as in artifacts written before layouts were chosen per
tensor). Tensors lie back to back in table order, so each one's offset and its values' and scales'
byte sizes follow from the table; version 1 wrote them into every entry ("offset", "nbytes",
"scales_nbytes": some 40% of a small model's header text), version 2 leaves them out. The reader accepts
both: a size or offset that is present must equal the derived one, and the header it returns carries
all three, so callers see one table whichever version was read. The reader checks
magic, version, length and checksum, then stream-decompresses: the header first (bounded), validated
against its kind's schema (amips_plugin.core.manifest_schema); the tensor table must tile a tensor
section whose size, with the header's, is the frame's declared size and at most
min(64 × the compressed size (at least 64 MiB), MAX_BODY_BYTES); a model's architecture is built on
the meta device and compared with the table (model_artifact); only then are exactly the declared tensor bytes
inflated, and any byte after them is refused. So a hostile header cannot make the reader allocate
more than its table accounts for. Every failure is an ArtifactError with one line that says what is
wrong.
"""
from __future__ import annotations

import hashlib
import json
import struct
from math import prod
from typing import Any, Callable

import numpy as np
import zstandard

from amips_plugin.core.errors import ArtifactError
from amips_plugin.core.limits import MAX_BODY_BYTES, MAX_HEADER_BYTES
from amips_plugin.core.manifest_schema import validate_header

from .quantization import (ROW, EncodedTensor, decode_tensor, matrix_shape,
                           numpy_dtype, scale_count)

MAGIC = b"\x89AMIPS\r\n"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: every table entry also states its offset and byte sizes
_DERIVED = ("offset", "nbytes", "scales_nbytes")  # table fields the reader computes (version 1 stored them)
_PREFIX = struct.Struct("<8sIQ")
_HEADER_LENGTH = struct.Struct("<I")
_CHECKSUM_BYTES = 32
ZSTD_LEVEL = 19
MAX_INFLATION = 64
MIN_INFLATE_BYTES = 64 << 20
MAX_WINDOW_BYTES = 1 << 24  # level 19 writes frames with windows ≤ 8 MiB; a larger one is not ours


def pack(kind: str, header: dict[str, Any], tensors: list[tuple[str, EncodedTensor]]) -> bytes:
    """Frame a payload of kind `kind` ("amips-model", "amips-pq"): header + tensors, compressed, checksummed."""
    table: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, encoded in tensors:
        table.append({"name": name, "dtype": encoded.dtype, "shape": list(encoded.shape)})
        if encoded.dtype == "int8" and (encoded.scale_axis, encoded.scale_group) != (ROW, 1):
            table[-1].update(scale_axis=encoded.scale_axis, scale_group=encoded.scale_group)
        chunks += [encoded.data, encoded.scales]
    header_bytes = json.dumps({**header, "format": kind, "tensors": table}, sort_keys=True,
                              separators=(",", ":")).encode("utf-8")
    return frame(header_bytes, b"".join(chunks))


def frame(header_bytes: bytes, data: bytes) -> bytes:
    """The container around a JSON header's bytes and the tensor section: compressed, prefixed, checksummed."""
    body = _HEADER_LENGTH.pack(len(header_bytes)) + header_bytes + data
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(body)
    framed = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(compressed)) + compressed
    return framed + hashlib.sha256(framed).digest()


def unpack(blob: bytes, kind: str, check: Callable[[dict[str, Any]], None] | None = None
           ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Verify and parse a payload of kind `kind`; arrays come back in their stored (decoded) form. `check(header)`
    runs on the validated header before any tensor byte is inflated (a model compares it with its architecture)."""
    return _load(blob, kind, check)


def _unframe(blob: bytes) -> memoryview:
    """Check magic, version, length and checksum; return the compressed frame (not yet inflated)."""
    if len(blob) < _PREFIX.size + _CHECKSUM_BYTES:
        raise ArtifactError(f"not an amips model: only {len(blob)} bytes")
    magic, version, length = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise ArtifactError("not an amips model: bad magic bytes")
    if version not in READABLE_VERSIONS:
        newer = " (written by a newer amips; upgrade to read it)" if version > FORMAT_VERSION else ""
        raise ArtifactError(f"unsupported artifact format version {version}; this amips reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))}{newer}")
    expected = _PREFIX.size + length + _CHECKSUM_BYTES
    if len(blob) != expected:
        raise ArtifactError(f"artifact is truncated or has trailing bytes: {len(blob)} bytes, expected {expected}")
    framed, checksum = memoryview(blob)[:-_CHECKSUM_BYTES], blob[-_CHECKSUM_BYTES:]
    if hashlib.sha256(framed).digest() != checksum:
        raise ArtifactError("artifact checksum mismatch: the file is corrupt or was modified")
    return framed[_PREFIX.size:]


def inflation_cap(compressed_bytes: int) -> int:
    """The most an artifact of `compressed_bytes` may inflate to: MAX_INFLATION × its size (real
    weights barely compress; a decompression bomb inflates thousands of times), at least
    MIN_INFLATE_BYTES, at most MAX_BODY_BYTES."""
    return min(MAX_BODY_BYTES, max(MIN_INFLATE_BYTES, MAX_INFLATION * compressed_bytes))


def _read_exact(reader: Any, size: int, what: str) -> bytes:
    """Exactly `size` inflated bytes (a buffer of that size, never more); ArtifactError when short."""
    buffer = bytearray(size)
    view, filled = memoryview(buffer), 0
    try:
        while filled < size:
            got = reader.readinto(view[filled:])
            if not got:
                raise ArtifactError(f"artifact body ends inside its {what}")
            filled += got
    except zstandard.ZstdError as exc:
        raise ArtifactError(f"artifact body does not decompress: {exc}") from None
    return bytes(buffer)


def _scale_layout(entry: dict[str, Any]) -> tuple[int, int]:
    """An entry's int8 scale layout (axis, group): per row when absent (older artifacts); only int8 has one,
    and a group spans 1 to all of its axis's rows or columns."""
    name, shape = entry["name"], tuple(entry["shape"])
    axis, group = entry.get("scale_axis"), entry.get("scale_group")
    if entry["dtype"] != "int8":
        if axis is not None or group is not None:
            raise ArtifactError(f"tensor {name[:64]!r} is {entry['dtype']} but declares int8 scales")
        return ROW, 1
    if len(shape) < 1:
        raise ArtifactError(f"tensor {name[:64]!r} is an int8 scalar; scalars are stored as fp32")
    axis, group = (ROW if axis is None else axis), (1 if group is None else group)
    if group > max(1, matrix_shape(shape)[axis]):
        raise ArtifactError(f"tensor {name[:64]!r} declares scale groups of {group} along an axis of "
                            f"{matrix_shape(shape)[axis]}")
    return axis, group


def _tensor_layout(table: list[dict[str, Any]]) -> int:
    """Check that the (schema-valid) tensor table tiles the tensor section and complete each entry's
    offset and byte sizes (derived from the table; checked where the entry states them); return the
    section's size."""
    cursor, names = 0, set()
    for entry in table:
        name, dtype, shape = entry["name"], entry["dtype"], tuple(entry["shape"])
        if name in names:
            raise ArtifactError(f"invalid tensor table entry for {name[:64]!r}: the name repeats")
        names.add(name)
        scales = 4 * scale_count(shape, *_scale_layout(entry)) if dtype == "int8" else 0
        derived = dict(zip(_DERIVED, (cursor, prod(shape) * numpy_dtype(dtype).itemsize, scales)))
        if any(entry.get(field, value) != value for field, value in derived.items()):
            raise ArtifactError(f"tensor {name[:64]!r} does not match its declared shape, dtype or position")
        entry.update(derived)
        cursor += entry["nbytes"] + entry["scales_nbytes"]
    if cursor > MAX_BODY_BYTES:
        raise ArtifactError(f"artifact declares {cursor:,} bytes of tensors, over the {MAX_BODY_BYTES:,} limit")
    return cursor


def _load(blob: bytes, kind: str, check: Callable[[dict[str, Any]], None] | None = None,
          header_only: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inflate and parse an artifact, deciding every size before allocating it.

    The body is stream-decompressed: first the header (at most MAX_HEADER_BYTES), which is
    validated against its kind's schema; its tensor table must tile a tensor section of known size,
    and the frame's declared size (when it has one) must equal header + tensors. `check(header)`
    then runs (a model compares the table with its architecture, built on the meta device), and only
    then are exactly that many tensor bytes inflated; anything after them is refused. So neither a
    decompression bomb nor a header declaring a huge model costs more than what the table accounts
    for, itself at most MAX_BODY_BYTES.
    """
    frame = _unframe(blob)
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        raise ArtifactError(f"artifact body does not decompress: {exc}") from None
    known = declared not in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR)
    cap = inflation_cap(len(frame))
    if known and declared > cap:
        raise ArtifactError(f"artifact body declares {declared:,} bytes, over the {cap:,}-byte limit for "
                            f"{len(frame):,} compressed bytes")
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
    with decompressor.stream_reader(frame, read_across_frames=False) as reader:
        (header_length,) = _HEADER_LENGTH.unpack(_read_exact(reader, _HEADER_LENGTH.size, "header length"))
        if header_length > min(MAX_HEADER_BYTES, cap) or (known and _HEADER_LENGTH.size + header_length > declared):
            raise ArtifactError("artifact header runs past the end of the body")
        header_bytes = _read_exact(reader, header_length, "header")
        try:
            header = json.loads(header_bytes.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, absurd nesting or integers
            raise ArtifactError(f"artifact header is not valid JSON: {str(exc)[:120] or type(exc).__name__}") from None
        validate_header(header, kind)
        data_size = _tensor_layout(header["tensors"])
        if _HEADER_LENGTH.size + header_length + data_size > cap:
            raise ArtifactError(f"artifact declares {data_size:,} bytes of tensors, over the {cap:,}-byte limit "
                                f"for {len(frame):,} compressed bytes")
        if known and declared != _HEADER_LENGTH.size + header_length + data_size:
            raise ArtifactError(f"artifact body declares {declared:,} bytes; its header and tensor table account "
                                f"for {_HEADER_LENGTH.size + header_length + data_size:,}")
        if header_only:
            return header, {}
        if check is not None:
            check(header)
        data = _read_exact(reader, data_size, "tensors")
        try:
            trailing = reader.read(1)
        except zstandard.ZstdError as exc:
            raise ArtifactError(f"artifact body does not decompress: {exc}") from None
        if trailing:
            raise ArtifactError("unaccounted bytes after the last tensor")
    tensors: dict[str, np.ndarray] = {}
    for entry in header["tensors"]:
        start, middle = entry["offset"], entry["offset"] + entry["nbytes"]
        tensors[entry["name"]] = decode_tensor(entry["dtype"], tuple(entry["shape"]), data[start:middle],
                                               data[middle:middle + entry["scales_nbytes"]], *_scale_layout(entry))
    return header, tensors


def read_header(blob: bytes, kind: str) -> dict[str, Any]:
    """The verified JSON header of a payload of kind `kind`; the tensors are not inflated."""
    return _load(blob, kind, header_only=True)[0]
