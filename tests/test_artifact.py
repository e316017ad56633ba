"""The model file: exact round trip, quantized sizes, and refusal of anything corrupt or foreign."""
import hashlib
import json
import struct

import numpy as np
import pytest
import torch

from amips_plugin.core.errors import ArtifactError
from amips_plugin.models import ModelConfig, build_model
from amips_plugin.compression.artifact import FORMAT_VERSION, MAGIC, frame
from amips_plugin.model_artifact import decode_model, encode_model, load_model, read_header, save_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="supportnet", dim=48, width=64, depth=3, reinject_every=2))


@pytest.mark.parametrize("config", [
    ModelConfig(kind="supportnet", dim=48, width=64, depth=3, reinject_every=2),
    ModelConfig(kind="keynet", dim=48, width=20, depth=5, reinject_every=2),
    ModelConfig(kind="smoothmax", dim=48, width=60, points=30),  # scalar parameters, rank > dim
])
def test_fp32_round_trip_is_exact_and_keeps_metadata(config, tmp_path):
    model = build_model(config)
    path = tmp_path / "m.amips"
    save_model(path, model, {"note": "hello", "fingerprint": {"count": 3}})
    loaded = load_model(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    assert loaded.header["metadata"]["note"] == "hello"
    x = torch.randn(4, 48)
    torch.testing.assert_close(loaded.model.predict_keys(x), model.predict_keys(x))


@pytest.mark.parametrize("dtype,max_ratio,tolerance", [("fp16", 0.55, 2e-3), ("int8", 0.30, 2e-2)])
def test_quantized_artifacts_are_smaller_and_close(model, dtype, max_ratio, tolerance):
    fp32 = encode_model(model)
    small = encode_model(model, dtype=dtype)
    assert len(small) <= max_ratio * len(fp32)
    x = torch.randn(64, 48)
    restored = decode_model(small).model
    rel = (restored.predict_keys(x) - model.predict_keys(x)).norm() / model.predict_keys(x).norm()
    assert rel.item() < tolerance


def test_every_single_flipped_byte_is_refused(model):
    blob = encode_model(build_model(ModelConfig(kind="keynet", dim=4, width=3, depth=1)))
    for position in range(len(blob)):
        mutated = bytearray(blob)
        mutated[position] ^= 0x01
        with pytest.raises(ArtifactError):
            decode_model(bytes(mutated))


@pytest.mark.parametrize("cut", [0, 5, 20, -1, -33])
def test_truncation_is_refused(model, cut):
    blob = encode_model(model)
    with pytest.raises(ArtifactError, match="amips model|truncated"):
        decode_model(blob[:cut])


def test_future_version_and_foreign_files_are_refused(model):
    blob = bytearray(encode_model(model))
    struct.pack_into("<I", blob, len(MAGIC), FORMAT_VERSION + 1)
    with pytest.raises(ArtifactError, match="newer amips"):
        decode_model(bytes(blob))
    with pytest.raises(ArtifactError, match="bad magic"):
        decode_model(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ArtifactError, match="no such model file"):
        load_model("/nonexistent/model.amips")


def test_header_is_readable_without_building_the_model(model):
    header = read_header(encode_model(model, {"k": 1}, dtype="int8"))
    assert header["model"]["kind"] == "supportnet" and header["dtype"] == "int8"
    assert {t["dtype"] for t in header["tensors"] if t["shape"]} == {"int8"}  # matrices and vectors
    assert all(t["dtype"] == "fp32" for t in header["tensors"] if not t["shape"])  # scalars stay fp32


def test_save_replaces_the_file_by_rename_and_leaves_no_temporary_files(model, tmp_path, monkeypatch):
    """A save writes a temporary file and renames it over the old one: a save that fails half-way
    leaves the previous file whole, and none leaves a temporary file behind."""
    import os

    path = tmp_path / "m.amips"
    save_model(path, model)
    first = path.read_bytes()
    real_replace = os.replace

    def crash(src, dst):  # the process dies between writing the new bytes and the rename
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_model(path, model, {"v": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_bytes() == first  # the old file, whole
    save_model(path, model, {"v": 2})
    assert path.read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["m.amips"]
    assert np.frombuffer(path.read_bytes()[:8], dtype=np.uint8).tobytes() == MAGIC


def _stored(blob: bytes) -> tuple[bytes, bytes]:
    """(header JSON bytes, tensor section) as an artifact stores them."""
    import zstandard

    body = zstandard.ZstdDecompressor().decompress(blob[20:-32])
    length = int.from_bytes(body[:4], "little")
    return body[4:4 + length], body[4 + length:]


def _as_version(blob: bytes, version: int) -> bytes:
    """The same artifact with another format version in its prefix (checksum recomputed)."""
    framed = blob[:8] + struct.pack("<I", version) + blob[12:-32]
    return framed + hashlib.sha256(framed).digest()


def test_the_stored_header_is_compact_and_leaves_out_what_the_table_implies(model):
    """Version 2 stores name, dtype, shape (and a non-per-row int8 layout) per tensor, as JSON without spaces;
    the reader derives offsets and byte sizes, which tile the tensor section back to back."""
    blob = encode_model(model, {"k": 1}, dtype="int8")
    raw, data = _stored(blob)
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    stored = json.loads(raw)["tensors"]
    assert all(set(entry) <= {"name", "dtype", "shape", "scale_axis", "scale_group"} for entry in stored)
    assert not any((entry.get("scale_axis"), entry.get("scale_group")) == (0, 1) for entry in stored)
    table = read_header(blob)["tensors"]
    assert [entry["name"] for entry in table] == [entry["name"] for entry in stored]
    ends = np.cumsum([entry["nbytes"] + entry["scales_nbytes"] for entry in table])
    assert [entry["offset"] for entry in table] == [0, *ends[:-1].tolist()] and ends[-1] == len(data)
    assert all(entry["nbytes"] == int(np.prod(entry["shape"])) * (1 if entry["dtype"] == "int8" else 4)
               for entry in table)


def test_version_1_artifacts_that_state_offsets_and_sizes_still_load_and_must_be_right(model):
    blob = encode_model(model, dtype="int8")
    header, data = read_header(blob), _stored(blob)[1]  # the header as read: every size stated, as version 1 had it
    old = _as_version(frame(json.dumps(header).encode(), data), 1)
    assert struct.unpack_from("<I", old, len(MAGIC))[0] == 1 and FORMAT_VERSION == 2
    restored, expected = decode_model(old).model.state_dict(), decode_model(blob).model.state_dict()
    assert all(torch.equal(restored[name], expected[name]) for name in expected)
    for field in ("offset", "nbytes", "scales_nbytes"):
        wrong = json.loads(json.dumps(header))
        wrong["tensors"][1][field] += 4
        with pytest.raises(ArtifactError, match="does not match its declared shape, dtype or position"):
            decode_model(_as_version(frame(json.dumps(wrong).encode(), data), 1))
