"""int8 scale granularity chosen per tensor: sizes, error bound, round trip, old artifacts, reader checks."""
import base64
import json

import numpy as np
import pytest
import torch

from amips_plugin.core.errors import ArtifactError
from amips_plugin.models import ModelConfig, build_model
from amips_plugin.compression.artifact import frame
from amips_plugin.model_artifact import decode_model, encode_model, read_header
from amips_plugin.compression.quantization import (COLUMN, E_UNIFORM, ERROR_SLACK, ROW, decode_tensor, encode_tensor,
                                                   matrix_shape, scale_count)


def _relative_error(array: np.ndarray, encoded) -> float:
    decoded = decode_tensor(encoded.dtype, encoded.shape, encoded.data, encoded.scales,
                            encoded.scale_axis, encoded.scale_group)
    return float(np.linalg.norm(decoded - array) / np.linalg.norm(array))


def _per_row(array: np.ndarray) -> np.ndarray:
    """The per-row int8 reconstruction (a vector is one row), computed independently of the encoder."""
    rows = array.reshape(matrix_shape(array.shape))
    scales = np.abs(rows).max(axis=1, keepdims=True) / 127
    scales[scales == 0] = 1
    return (np.rint(rows / scales) * scales).reshape(array.shape).astype(np.float32)


def _per_row_error(array: np.ndarray) -> float:
    return float(np.linalg.norm(_per_row(array) - array) / np.linalg.norm(array))


def _low_rank_factor(rows: int = 2000, rank: int = 16) -> np.ndarray:
    """Coefficients of a low-rank factor: Gaussian columns whose spread decays like a PCA spectrum."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal((rows, rank)) * np.geomspace(1.0, 0.1, rank)).astype(np.float32)


def test_a_low_rank_factor_fits_in_30_percent_of_fp32_within_the_error_bound():
    factor = _low_rank_factor()
    encoded = encode_tensor(factor, "int8")
    stored = len(encoded.data) + len(encoded.scales)
    assert stored <= 0.30 * factor.nbytes  # per-row scales: (1 + 4/16) / 4 = 31.25%
    assert (encoded.scale_axis, encoded.scale_group) != (ROW, 1)
    error, row_error = _relative_error(factor, encoded), _per_row_error(factor)
    assert error <= ERROR_SLACK * max(row_error, E_UNIFORM)
    assert error < 0.02


def test_a_layout_too_coarse_for_the_tensor_is_refused():
    """One row 10× the others carries half the energy: one scale for all would give the 100 small rows a 10×
    coarser step (about 7× the per-row error); the bound allows only small row groups."""
    rows = np.random.default_rng(1).uniform(-1, 1, (101, 32)).astype(np.float32)
    rows[0] *= 10
    bound = ERROR_SLACK * max(_per_row_error(rows), E_UNIFORM)
    one_scale = np.abs(rows).max() / 127
    assert np.linalg.norm(np.rint(rows / one_scale) * one_scale - rows) / np.linalg.norm(rows) > bound
    encoded = encode_tensor(rows, "int8")
    assert encoded.scale_axis == ROW and 101 > len(encoded.scales) // 4 > 1
    assert _relative_error(rows, encoded) <= bound


def test_columns_of_very_different_norms_get_per_column_scales():
    columns = (np.random.default_rng(2).standard_normal((500, 8)) * np.geomspace(1e-3, 1e3, 8)).astype(np.float32)
    encoded = encode_tensor(columns, "int8")
    assert (encoded.scale_axis, encoded.scale_group) == (COLUMN, 1) and len(encoded.scales) == 4 * 8
    assert _relative_error(columns, encoded) < 0.01


def test_rows_of_one_entry_share_scales():
    """Per-row scales are exact on a 32 × 1 factor (each entry its own scale, 4 bytes per 1-byte code); the
    uniform-int8 floor of the bound (E_UNIFORM) lets its entries share scales."""
    factor = np.random.default_rng(4).standard_normal((32, 1)).astype(np.float32)
    assert _per_row_error(factor) < 1e-6
    encoded = encode_tensor(factor, "int8")
    assert len(encoded.scales) < 4 * 8 and _relative_error(factor, encoded) <= ERROR_SLACK * E_UNIFORM


@pytest.mark.parametrize("shape", [(2000, 16), (16, 384), (384,), (4, 5, 6), (7, 1), (0, 3), (3, 0)])
def test_round_trip_decodes_every_code_times_its_scale(shape):
    array = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    encoded = encode_tensor(array, "int8")
    assert encoded.dtype == "int8" and encoded.shape == shape
    assert len(encoded.scales) == 4 * scale_count(shape, encoded.scale_axis, encoded.scale_group)
    decoded = decode_tensor("int8", shape, encoded.data, encoded.scales, encoded.scale_axis, encoded.scale_group)
    assert decoded.shape == shape and decoded.dtype == np.float32
    if array.size:
        assert _relative_error(array, encoded) <= ERROR_SLACK * max(_per_row_error(array), E_UNIFORM)
        assert np.array_equal(encode_tensor(decoded, "int8").data, encoded.data)  # codes are stable


def test_scalars_stay_fp32_and_zero_tensors_decode_to_zero():
    assert encode_tensor(np.float32(0.5), "int8").dtype == "fp32"
    zeros = np.zeros((10, 4), np.float32)
    encoded = encode_tensor(zeros, "int8")
    assert len(encoded.scales) == 4  # one scale: every layout is exact
    assert not decode_tensor("int8", (10, 4), encoded.data, encoded.scales, encoded.scale_axis,
                             encoded.scale_group).any()


def test_a_low_rank_smoothmax_model_stores_int8_in_30_percent_of_fp32():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="smoothmax", dim=384, width=16, points=2000))
    with torch.no_grad():
        model.coefficients.copy_(torch.from_numpy(_low_rank_factor()))
    fp32, int8 = encode_model(model), encode_model(model, dtype="int8")
    assert len(int8) <= 0.30 * len(fp32)
    table = {entry["name"]: entry for entry in read_header(int8)["tensors"]}
    assert table["coefficients"]["scales_nbytes"] < 4 * 2000 and table["centre"]["dtype"] == "int8"
    per_row = build_model(model.config)
    per_row.load_state_dict({name: torch.from_numpy(_per_row(t.numpy())) if t.ndim else t
                             for name, t in model.state_dict().items()})
    x = torch.randn(64, 384)
    exact = model.predict_keys(x)
    rel, rel_per_row = ((m.predict_keys(x) - exact).norm() / exact.norm() for m in (decode_model(int8).model, per_row))
    assert 0 < rel_per_row.item() < 0.02 and rel.item() <= ERROR_SLACK * rel_per_row.item()


# An int8 artifact written before scale layouts were chosen (per-row scales, vectors fp32, no scale_axis or
# scale_group in the table): torch.manual_seed(0); build_model(ModelConfig(kind="keynet", dim=6, width=5,
# depth=1)); encode_model(model, dtype="int8") at commit a74efc8.
OLD_PER_ROW_INT8 = base64.b64decode(
    "iUFNSVBTDQoBAAAA5QEAAAAAAAAotS/9YIQC3Q4A1tZZJyDfEUoA4AIpwCNW0/eLljAR8Jke9JrJtibsfYoP7aw2Lm+CinwytE4ATgBQAMC/9xX7"
    "Xc2X2/k1WY/bG5JNw7P3crW9IbE0PDvuB/a1HWlseHbZL6vJ/r7H62u/3sQH5nqyX9YL/mx7Q7J3fl9ub3j2Hlj8a7sRAAi0A5gfd8v1REqF4utr"
    "tRwOtnnF/J4no/l/79tsP7//izNgbuf3ZL5X8Of7+l9TyxEpPfDHq1AqF7/3AYMynJ8pBvthH/tpvc6X64OV35f7BYeQV0oN7/IVb/L9eAp8zZ9M"
    "Dv5hcPITmlqdXR4T7iA72QFLUZpBGbtkmyPxJB0yhi5VdZESgIRlMJaMpiHZZDq/8Le5+LLc7IIB2jSVi6US4a1PDqXT6xAU8QWdOczPk90E3zIIv"
    "tAF8pe3gu95DV4xFfCtopJ37eghacmSaaFLhpWlwCRT8+swKa0uF19CCSTkLsPRwiU8AorDzmMzIJBGAqP0mGx8AgAq+MTdVA93C9AQ3PFjWDne7c"
    "Yuh/TVwX5kP8q7MxzKRbPgWvijSsIVB7RcINIXGlYAORvHcmGZ2o2MwmAt7zsqsrj6NxjsXhsxMoK2OIDFAD244tARUawGQi4dNMCAiX2m+cpaTvzs"
    "PYOdVR04B5doNkwa48oDK/Nn5UiP0w16IWxwBGCS")


def test_old_per_row_int8_artifacts_still_decode():
    torch.manual_seed(0)
    original = build_model(ModelConfig(kind="keynet", dim=6, width=5, depth=1)).state_dict()
    header = read_header(OLD_PER_ROW_INT8)
    assert not any("scale_axis" in entry or "scale_group" in entry for entry in header["tensors"])
    loaded = decode_model(OLD_PER_ROW_INT8).model.state_dict()
    for name, weight in original.items():
        if weight.ndim < 2:
            assert torch.equal(loaded[name], weight), name  # old artifacts kept vectors fp32
        else:  # per-row scales: each entry within half a step of its row's scale
            step = weight.abs().amax(dim=1, keepdim=True) / 127
            assert ((loaded[name] - weight).abs() <= step / 2 + 1e-7).all(), name
    assert not torch.equal(loaded["hidden.0.weight"], original["hidden.0.weight"])  # it was quantized


def _int8_header(**entry_changes) -> tuple[bytes, bytes]:
    """A valid int8 smoothmax artifact's header and tensor bytes, with the coefficients' table entry changed."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="smoothmax", dim=6, width=3, points=40))
    header = read_header(encode_model(model, dtype="int8"))
    encoded = [encode_tensor(t.numpy(), "int8") for t in model.state_dict().values()]
    entry = next(e for e in header["tensors"] if e["name"] == "coefficients")
    for key, value in entry_changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return json.dumps(header).encode(), b"".join(e.data + e.scales for e in encoded)


def test_the_tensor_table_round_trips_through_the_reader():
    header, data = _int8_header()
    assert decode_model(frame(header, data)).model.num_parameters() > 0
    entry = next(e for e in json.loads(header)["tensors"] if e["name"] == "coefficients")
    assert entry["scale_axis"] == ROW and entry["scale_group"] > 1  # 40 × 3 coefficients share scales


@pytest.mark.parametrize("changes,message", [
    ({"scale_group": 41}, "scale groups of 41 along an axis of 40"),
    ({"scale_group": 1}, "does not match"),  # 40 scales declared by the layout, fewer stored
    ({"scale_axis": 1, "scale_group": 1}, "does not match"),
    ({"scale_axis": 2}, "invalid"),
    ({"scale_group": 0}, "invalid"),
    ({"scale_axis": None, "scale_group": None}, "does not match"),  # read as per row: 40 scales
])
def test_scale_layouts_that_do_not_match_the_stored_scales_are_refused(changes, message):
    header, data = _int8_header(**changes)
    with pytest.raises(ArtifactError, match=message) as info:
        decode_model(frame(header, data))
    assert "\n" not in str(info.value)


def test_scale_layouts_on_other_dtypes_and_int8_scalars_are_refused():
    header_bytes, data = _int8_header()
    header = json.loads(header_bytes)
    scalar = next(e for e in header["tensors"] if e["shape"] == [])
    scalar.update(scale_axis=0, scale_group=1)
    with pytest.raises(ArtifactError, match="fp32 but declares int8 scales"):
        decode_model(frame(json.dumps(header).encode(), data))
    del scalar["scale_axis"], scalar["scale_group"]
    scalar.update(dtype="int8", nbytes=1)
    with pytest.raises(ArtifactError, match="int8 scalar"):
        decode_model(frame(json.dumps(header).encode(), data))
