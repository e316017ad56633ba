"""The model artifact: data only — a header and tensors — never code, never pickle (DESIGN.md §5).

File layout (all integers little-endian):

    magic      8 bytes   b"\\x89AMIPS\\r\\n"
    version    u32       FORMAT_VERSION
    length     u64       byte length of the compressed body
    body       zstd frame of:  u32 header length | header (UTF-8 JSON) | tensor bytes
    checksum   32 bytes  SHA-256 of everything before it

The JSON header holds the architecture ("model"), the tensor table (name, dtype, shape, offset
and size of values and scales inside the tensor bytes) and free-form metadata (training settings,
fingerprint of the training keys, metrics at training time, library versions). The reader checks
magic, version, length, checksum, decompressed size, and that the tensor table tiles the tensor
bytes exactly and matches the architecture, before any weight reaches a model. Every failure is
an ArtifactError with one line that says what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

from amips_plugin.errors import ArtifactError
from amips_plugin.files import atomic_write
from amips_plugin.models import MIPSModel, ModelConfig, build_model

from .quantization import CONTAINER_DTYPES, STORAGE_DTYPES, EncodedTensor, decode_tensor, encode_tensor, numpy_dtype

MAGIC = b"\x89AMIPS\r\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_HEADER_LENGTH = struct.Struct("<I")
_CHECKSUM_BYTES = 32
MODEL_KIND = "amips-model"
MAX_BODY_BYTES = 1 << 32  # refuse to inflate anything larger (decompression bombs)
ZSTD_LEVEL = 19


@dataclass(frozen=True)
class LoadedModel:
    model: MIPSModel
    header: dict[str, Any]


def pack(kind: str, header: dict[str, Any], tensors: list[tuple[str, EncodedTensor]]) -> bytes:
    """Frame a payload of kind `kind` ("amips-model", "amips-pq"): header + tensors, compressed, checksummed."""
    table: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for name, encoded in tensors:
        table.append({"name": name, "dtype": encoded.dtype, "shape": list(encoded.shape), "offset": offset,
                      "nbytes": len(encoded.data), "scales_nbytes": len(encoded.scales)})
        chunks += [encoded.data, encoded.scales]
        offset += len(encoded.data) + len(encoded.scales)
    header_bytes = json.dumps({**header, "format": kind, "tensors": table}, sort_keys=True).encode("utf-8")
    body = _HEADER_LENGTH.pack(len(header_bytes)) + header_bytes + b"".join(chunks)
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(body)
    framed = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(compressed)) + compressed
    return framed + hashlib.sha256(framed).digest()


def unpack(blob: bytes, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Verify and parse a payload of kind `kind`; arrays come back in their stored (decoded) form."""
    header, data = _parse_header(_unframe(blob), kind)
    return header, _read_tensors(header["tensors"], data)


def encode_model(model: MIPSModel, metadata: dict[str, Any] | None = None, dtype: str = "fp32") -> bytes:
    """Serialise `model` with weights stored as `dtype` (fp32, fp16 or int8)."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r}; expected one of {STORAGE_DTYPES}")
    tensors = [(name, encode_tensor(t.detach().cpu().numpy(), dtype)) for name, t in model.state_dict().items()]
    return pack(MODEL_KIND, {"dtype": dtype, "model": model.config.to_dict(), "metadata": metadata or {}}, tensors)


def _unframe(blob: bytes) -> bytes:
    """Check magic, version, length and checksum; return the decompressed body."""
    if len(blob) < _PREFIX.size + _CHECKSUM_BYTES:
        raise ArtifactError(f"not an amips model: only {len(blob)} bytes")
    magic, version, length = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise ArtifactError("not an amips model: bad magic bytes")
    if version != FORMAT_VERSION:
        newer = " (written by a newer amips; upgrade to read it)" if version > FORMAT_VERSION else ""
        raise ArtifactError(f"unsupported artifact format version {version}; this amips reads version "
                            f"{FORMAT_VERSION}{newer}")
    expected = _PREFIX.size + length + _CHECKSUM_BYTES
    if len(blob) != expected:
        raise ArtifactError(f"artifact is truncated or has trailing bytes: {len(blob)} bytes, expected {expected}")
    framed, checksum = blob[:-_CHECKSUM_BYTES], blob[-_CHECKSUM_BYTES:]
    if hashlib.sha256(framed).digest() != checksum:
        raise ArtifactError("artifact checksum mismatch: the file is corrupt or was modified")
    try:
        frame = zstandard.get_frame_parameters(framed[_PREFIX.size:])
        if frame.content_size > MAX_BODY_BYTES:
            raise ArtifactError(f"artifact body declares {frame.content_size} bytes, over the {MAX_BODY_BYTES} limit")
        return zstandard.ZstdDecompressor().decompress(framed[_PREFIX.size:], max_output_size=MAX_BODY_BYTES)
    except zstandard.ZstdError as exc:
        raise ArtifactError(f"artifact body does not decompress: {exc}") from None


def _parse_header(body: bytes, kind: str) -> tuple[dict[str, Any], memoryview]:
    if len(body) < _HEADER_LENGTH.size:
        raise ArtifactError("artifact body is too short for a header")
    (header_length,) = _HEADER_LENGTH.unpack_from(body)
    end = _HEADER_LENGTH.size + header_length
    if end > len(body):
        raise ArtifactError("artifact header runs past the end of the body")
    try:
        header = json.loads(body[_HEADER_LENGTH.size:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"artifact header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != kind:
        found = header.get("format") if isinstance(header, dict) else None
        raise ArtifactError(f"artifact holds {found!r}, expected {kind!r}")
    if not isinstance(header.get("tensors"), list):
        raise ArtifactError("artifact header lacks its tensor table")
    return header, memoryview(body)[end:]


def _read_tensors(table: list[Any], data: memoryview) -> dict[str, np.ndarray]:
    """Decode the tensor table, insisting that it tiles the tensor bytes exactly."""
    tensors: dict[str, np.ndarray] = {}
    cursor = 0
    for entry in table:
        try:
            name, dtype, shape = str(entry["name"]), str(entry["dtype"]), tuple(int(s) for s in entry["shape"])
            offset, nbytes, scales_nbytes = int(entry["offset"]), int(entry["nbytes"]), int(entry["scales_nbytes"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"malformed tensor table entry: {entry!r}"[:200]) from None
        if dtype not in CONTAINER_DTYPES or any(s < 0 for s in shape) or name in tensors:
            raise ArtifactError(f"invalid tensor table entry for {name!r}")
        expected_scales = 4 * shape[0] if dtype == "int8" and shape else 0
        if (offset != cursor or nbytes != prod(shape) * numpy_dtype(dtype).itemsize
                or scales_nbytes != expected_scales or offset + nbytes + scales_nbytes > len(data)):
            raise ArtifactError(f"tensor {name!r} does not match its declared shape, dtype or position")
        values = bytes(data[offset:offset + nbytes])
        scales = bytes(data[offset + nbytes:offset + nbytes + scales_nbytes])
        tensors[name] = decode_tensor(dtype, shape, values, scales)
        cursor = offset + nbytes + scales_nbytes
    if cursor != len(data):
        raise ArtifactError(f"{len(data) - cursor} unaccounted bytes after the last tensor")
    return tensors


def read_header(blob: bytes) -> dict[str, Any]:
    """The verified JSON header of a model artifact (for `amips inspect`)."""
    header, _ = _parse_header(_unframe(blob), MODEL_KIND)
    return header


def decode_model(blob: bytes) -> LoadedModel:
    """Verify and parse an artifact; the model comes back in eval mode on the CPU."""
    header, tensors = unpack(blob, MODEL_KIND)
    if not isinstance(header.get("model"), dict):
        raise ArtifactError("artifact header lacks its model config")
    try:
        config = ModelConfig.from_dict(header["model"])
        model = build_model(config)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"artifact's model config is invalid: {exc}") from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        raise ArtifactError("artifact's tensors do not match its declared architecture")
    model.load_state_dict({name: torch.from_numpy(array) for name, array in tensors.items()}, strict=True)
    model.eval()
    return LoadedModel(model=model, header=header)


def save_model(path: str | Path, model: MIPSModel, metadata: dict[str, Any] | None = None,
               dtype: str = "fp32") -> int:
    """Write atomically (temporary file + rename): a reader sees the old file or the new one."""
    blob = encode_model(model, metadata, dtype)
    atomic_write(path, blob)
    return len(blob)


def load_model(path: str | Path) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no such model file: {path}")
    return decode_model(path.read_bytes())
