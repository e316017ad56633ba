"""The manifest schema, collection names, query bounds and secret redaction, as pure functions."""
import json

import numpy as np
import pytest

from amips_plugin.adapters.base import SearchParams
from amips_plugin.adapters.names import check_collection_name
from amips_plugin.core.errors import InputError
from amips_plugin.manifest_schema import ManifestError, fix_command, parse_manifest_json, validate_manifest
from amips_plugin.query_bounds import check_query_norms, check_search_inputs
from amips_plugin.core.redact import redact

GOOD = {"version": 3, "blob": 12345, "sha256": "a" * 64, "bytes": 1000, "stale": False, "slot": "model",
        "created": "2026-01-01T00:00:00Z", "fingerprint": {"count": 80, "dim": 16, "sha256": "b" * 64},
        "model": {"kind": "smoothmax", "dim": 16, "width": 3, "depth": 2, "reinject_every": 4, "heads": 1,
                  "slope": 0.1, "sharpness": 20.0, "points": 5},
        "dtype": "int8", "metrics": {"match_rate": 0.5, "recall@10": 1}}


def test_a_good_manifest_validates_unchanged_and_an_absent_one_is_none():
    assert validate_manifest(GOOD, "model", "c") is GOOD
    assert validate_manifest(None, "model", "c") is None and validate_manifest({}, "pq", "c") is None
    assert validate_manifest({**GOOD, "future_field": [1]}, "model", "c")["future_field"] == [1]


@pytest.mark.parametrize("bad", [
    "text", 7, [GOOD], {**GOOD, "version": "3"}, {**GOOD, "version": True}, {**GOOD, "version": 0},
    {**GOOD, "blob": 1 << 40}, {**GOOD, "blob": 1.0}, {**GOOD, "sha256": "A" * 64}, {**GOOD, "bytes": 1 << 40},
    {**GOOD, "stale": 0}, {**GOOD, "fingerprint": [80]}, {**GOOD, "fingerprint": {"count": -1}},
    {**GOOD, "model": "smoothmax"}, {**GOOD, "model": {**GOOD["model"], "dim": 1 << 17}},
    {**GOOD, "model": {**GOOD["model"], "kind": "mlp"}}, {**GOOD, "model": {**GOOD["model"], "extra": 1}},
    {**GOOD, "model": {**GOOD["model"], "slope": float("nan")}}, {**GOOD, "dtype": "fp64"},
    {**GOOD, "metrics": {"match_rate": "high"}}, {**GOOD, "slot": "pq"},
])
def test_malformed_model_manifests_are_one_line_errors_naming_the_fix(bad):
    with pytest.raises(ManifestError) as info:
        validate_manifest(bad, "model", "c")
    assert "\n" not in str(info.value) and "amips drop-model c" in str(info.value)


def test_side_index_errors_name_drop_index_not_drop_model():
    assert fix_command("pq", "c") == "amips drop-index c pq"
    assert fix_command("router", "c") == "amips drop-index c route"
    with pytest.raises(ManifestError, match="drop-index c route"):
        validate_manifest({"version": 1}, "router", "c")


@pytest.mark.parametrize("text", [b"{", b"\xff", b"[" * 50_000 + b"]" * 50_000, b'{"version": ' + b"7" * 5000 + b"}",
                                  b" " * ((1 << 20) + 1)])
def test_manifest_files_that_are_not_json_or_too_large(text):
    with pytest.raises(ManifestError, match="drop-model c"):
        parse_manifest_json(text, "model", "c")


def test_a_manifest_file_round_trips():
    assert parse_manifest_json(json.dumps(GOOD), "model", "c") == GOOD


@pytest.mark.parametrize("name", ["", ".", "..", "c\n", "c\r", "a\x00b", "zero\u200bwidth", "x" * 201, "a/b", "a\\b",
                                  "c__amips", 7, None])
def test_unsafe_names_are_refused(name):
    with pytest.raises(InputError, match="invalid collection name"):
        check_collection_name(name)


@pytest.mark.parametrize("name", ["c", "docs-2026", "a.b", "émigré", "..a", "x" * 200, "c__amipsx"])
def test_ordinary_names_pass(name):
    assert check_collection_name(name) == name


def test_search_bounds():
    check_search_inputs(10_000, 100_000, SearchParams(hnsw_ef=100_000, oversampling=1000.0))
    check_search_inputs(1, None, SearchParams(hnsw_ef=1, oversampling=1))
    check_search_inputs(np.int64(5), np.int32(7), SearchParams())
    for limit, candidates, params in [(10_001, None, SearchParams()), (1, 0, SearchParams()), (1.5, None, SearchParams()),
                                      (1, None, SearchParams(hnsw_ef=-5)), (1, None, SearchParams(oversampling=0.99))]:
        with pytest.raises(InputError, match="must be"):
            check_search_inputs(limit, candidates, params)


def test_query_norm_bound():
    check_query_norms(np.full((2, 4), 4e17, dtype=np.float32))  # norm 8e17
    with pytest.raises(InputError, match="row 1"):
        check_query_norms(np.array([[1.0, 0.0], [1e19, 0.0]], dtype=np.float32))


@pytest.mark.parametrize("text, secret", [
    ("cannot reach Qdrant at https://bob:pa55word@db.example:6333 after 3 attempts", "pa55word"),
    ("cannot open store 'http://token@host:6333': refused", "token"),
    ("headers {'api-key': 'k3y-value'}", "k3y-value"),
    ("request failed with api_key=abcdef123&x=1", "abcdef123"),
])
def test_secrets_are_redacted(text, secret):
    assert secret not in redact(text) and "***" in redact(text)


def test_a_known_api_key_is_redacted_anywhere():
    assert redact("Unauthorized: key sk-live-42 rejected", ["sk-live-42"]) == "Unauthorized: key *** rejected"
    assert redact("no secrets at http://host:6333/collections") == "no secrets at http://host:6333/collections"
