"""Hostile files that pass the checksum: artifacts re-framed with the artifact module's own `frame` (so
every deeper check runs), decompression bombs, huge declared models, `.npy` headers declaring more
than the file holds, and the peak memory of refusing them."""
import hashlib
import io
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amips_plugin.arrays import load_vectors
from amips_plugin.core.errors import ArtifactError, InputError
from amips_plugin.models import ModelConfig, build_model
from amips_plugin.compression import artifact
from amips_plugin.compression.artifact import frame, unpack
from amips_plugin.model_artifact import MODEL_KIND, decode_model, encode_model, read_header

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = encode_model(build_model(ModelConfig(kind="smoothmax", dim=6, width=3, points=5)), {"k": "v"}, dtype="int8")


def _parts(blob: bytes) -> tuple[dict, bytes]:
    """(header, tensor section) of a valid artifact."""
    body = zstandard.ZstdDecompressor().decompress(blob[20:-32])
    length = int.from_bytes(body[:4], "little")
    return json.loads(body[4:4 + length]), body[4 + length:]


HEADER, DATA = _parts(VALID)
HUGE_MODEL = {"kind": "keynet", "dim": 65536, "width": 65536, "depth": 64}


def huge_model_artifact(**model) -> bytes:
    """A checksum-valid artifact declaring a keynet of 65536 × 65536 × 64 (~275 G parameters; `model`
    overrides fields) and no tensors."""
    header = {"format": MODEL_KIND, "tensors": [], "model": {**HUGE_MODEL, **model}, "dtype": "fp32"}
    return frame(json.dumps(header).encode(), b"")


def bomb_artifact(gib: int = 4, declare_size: bool = False) -> bytes:
    """A checksum-valid artifact: VALID's header and tensors, then `gib` GiB of zeros, in one zstd frame
    (a few hundred KB stored) that declares its size or not."""
    header = json.dumps(HEADER).encode()
    prefix = len(header).to_bytes(4, "little") + header + DATA
    size = len(prefix) + gib * (1 << 30) if declare_size else -1
    writer = zstandard.ZstdCompressor(level=3, write_content_size=declare_size).compressobj(size=size)
    parts = [writer.compress(prefix)]
    chunk = bytes(1 << 24)
    parts += [writer.compress(chunk) for _ in range(gib * 64)]
    parts.append(writer.flush())
    compressed = b"".join(parts)
    framed = (artifact.MAGIC + artifact.FORMAT_VERSION.to_bytes(4, "little") + len(compressed).to_bytes(8, "little")
              + compressed)
    return framed + hashlib.sha256(framed).digest()


def huge_npy(path: Path, gib: int = 400) -> Path:
    """A .npy file whose header declares `gib` GiB of float32 and holds 16 bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                   "shape": (gib * (1 << 28), 1)})
    path.write_bytes(buffer.getvalue() + bytes(16))
    return path


def test_a_tiny_artifact_declaring_a_huge_model_is_refused_before_any_weight_exists():
    blob = huge_model_artifact()
    assert len(blob) < 250
    started = time.perf_counter()
    with pytest.raises(ArtifactError, match="do not match its declared architecture"):
        decode_model(blob)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("declare_size, refusal", [(False, "unaccounted bytes"), (True, "over the .*-byte limit")])
def test_a_decompression_bomb_is_refused_before_it_inflates(declare_size, refusal):
    blob = bomb_artifact(gib=1, declare_size=declare_size)
    assert len(blob) < 200_000
    started = time.perf_counter()
    with pytest.raises(ArtifactError, match=refusal):
        decode_model(blob)
    assert time.perf_counter() - started < 2.0


def test_a_body_declaring_more_than_its_compression_allows_is_refused():
    header = json.dumps({**HEADER, "tensors": []}).encode()
    body = len(header).to_bytes(4, "little") + header + bytes(80 << 20)  # 80 MiB of zeros: ~2.5 KB compressed
    compressed = zstandard.ZstdCompressor(level=3).compress(body)
    framed = (artifact.MAGIC + artifact.FORMAT_VERSION.to_bytes(4, "little") + len(compressed).to_bytes(8, "little")
              + compressed)
    with pytest.raises(ArtifactError, match="over the .*-byte limit"):
        unpack(framed + hashlib.sha256(framed).digest(), MODEL_KIND)


@pytest.mark.parametrize("header", [
    {"format": MODEL_KIND, "tensors": "nope", "model": HEADER["model"], "dtype": "int8"},
    {"format": MODEL_KIND, "tensors": [], "model": "smoothmax", "dtype": "int8"},
    {"format": MODEL_KIND, "tensors": [], "model": {**HEADER["model"], "dim": 10 ** 30}, "dtype": "int8"},
    {"format": MODEL_KIND, "tensors": [], "model": {**HEADER["model"], "dim": True}, "dtype": "int8"},
    {"format": MODEL_KIND, "tensors": [{"name": "a", "dtype": "fp32", "shape": [-1], "offset": 0, "nbytes": 0,
                                        "scales_nbytes": 0}], "model": HEADER["model"], "dtype": "int8"},
    {"format": MODEL_KIND, "tensors": [], "model": HEADER["model"], "dtype": "fp64"},
])
def test_schema_invalid_headers_are_refused_with_one_line(header):
    with pytest.raises(ArtifactError) as info:
        decode_model(frame(json.dumps(header).encode(), DATA))
    assert "\n" not in str(info.value)


def test_a_deeply_nested_or_huge_integer_header_is_refused():
    nested = b'{"format": "amips-model", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ArtifactError, match="not valid JSON"):
        decode_model(frame(nested, b""))
    digits = b'{"format": "amips-model", "tensors": [], "dtype": "fp32", "model": {"dim": ' + b"9" * 5000 + b"}}"
    with pytest.raises(ArtifactError, match="not valid JSON"):
        decode_model(frame(digits, b""))


# -- fuzzing past the checksum: headers and tables mutated, then re-framed with a valid checksum -------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
                     lambda inner: (st.lists(inner, max_size=3)
                                    | st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                     max_leaves=8)
_TABLE_FIELDS = ("name", "dtype", "shape", "offset", "nbytes", "scales_nbytes", "scale_axis", "scale_group")
_MODEL_FIELDS = tuple(HEADER["model"])


@FUZZ
@given(st.sampled_from(("table", "model", "top")), st.integers(0, 64), st.sampled_from(_TABLE_FIELDS + _MODEL_FIELDS),
       _JSON | st.integers(-5, 5000))
def test_mutated_headers_with_valid_checksums_load_or_raise_artifact_errors(where, row, field, value):
    header = json.loads(json.dumps(HEADER))
    if where == "table":
        entry = header["tensors"][row % len(header["tensors"])]
        entry[field if field in _TABLE_FIELDS else "shape"] = value
    elif where == "model":
        header["model"][field if field in _MODEL_FIELDS else "dim"] = value
    else:
        header[("format", "tensors", "model", "dtype")[row % 4]] = value
    try:
        loaded = decode_model(frame(json.dumps(header).encode(), DATA))
    except ArtifactError:
        return
    assert loaded.model.num_parameters() > 0  # a mutation that still describes this model exactly


@FUZZ
@given(st.integers(0, len(DATA)), st.binary(max_size=16), st.booleans())
def test_tensor_sections_cut_or_padded_with_valid_checksums_are_refused(cut, extra, pad):
    data = DATA[:cut] + (extra if pad else b"")
    if len(data) == len(DATA):  # other weights of the same model: a valid artifact
        assert decode_model(frame(json.dumps(HEADER).encode(), data)).model.num_parameters() > 0
        return
    with pytest.raises(ArtifactError):
        decode_model(frame(json.dumps(HEADER).encode(), data))


def test_inspect_reads_only_the_header():
    assert read_header(VALID)["model"]["kind"] == "smoothmax"
    with pytest.raises(ArtifactError):
        read_header(huge_model_artifact()[:-1])


# -- .npy files ---------------------------------------------------------------------------------------------

def test_an_npy_header_declaring_hundreds_of_gib_is_refused_before_reading(tmp_path):
    with pytest.raises(InputError, match="the .npy header declares shape"):
        load_vectors(huge_npy(tmp_path / "huge.npy"))


# -- peak memory while refusing ---------------------------------------------------------------------------

@pytest.mark.slow
def test_refusing_hostile_files_stays_far_below_256_mib_above_the_baseline(tmp_path):
    """In a fresh process: ru_maxrss after setup (imports, the hostile bytes in memory) is the baseline;
    refusing the huge declared model, two 4 GiB zstd bombs (size declared or not) and a 400 GiB .npy header
    may add < 256 MiB."""
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        import test_hostile_files as h
        from pathlib import Path
        from amips_plugin.core.errors import AmipsError
        files = [h.huge_model_artifact(), h.bomb_artifact(gib=4), h.bomb_artifact(gib=4, declare_size=True)]
        npy = h.huge_npy(Path({str(tmp_path)!r}) / "huge.npy")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        refused = 0
        for blob in files:
            try:
                h.decode_model(blob)
            except AmipsError:
                refused += 1
        try:
            h.load_vectors(npy)
        except AmipsError:
            refused += 1
        print(refused, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    refused, grown_mib = out.stdout.split()
    assert int(refused) == 4
    assert float(grown_mib) < 256, f"refusing grew the peak RSS by {grown_mib} MiB"
