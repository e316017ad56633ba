"""The manifest schema (and the policy checks behind it), collection names, query bounds and secret redaction,
as pure functions."""
import json

import numpy as np
import pytest

from amips_plugin.adapters.base import SearchParams
from amips_plugin.adapters.names import check_collection_name
from amips_plugin.core.errors import ArtifactError, InputError
from amips_plugin.core.manifest_schema import (
    ManifestError, ManifestSchema, ModelManifestSchema, PolicyManifestSchema, as_schema, check_outgoing, fix_command,
    parse_manifest_json, validate_header, validate_manifest)
from amips_plugin import serving_policy as sp
from amips_plugin.query_bounds import check_queries, check_query_norms, check_search_inputs
from amips_plugin.core.redact import redact, userinfo

GOOD = {"version": 3, "blob": 12345, "sha256": "a" * 64, "bytes": 1000, "stale": False, "slot": "model",
        "created": "2026-01-01T00:00:00Z", "fingerprint": {"count": 80, "dim": 16, "sha256": "b" * 64},
        "model": {"kind": "smoothmax", "dim": 16, "width": 3, "depth": 2, "reinject_every": 4, "heads": 1,
                  "slope": 0.1, "sharpness": 20.0, "points": 5},
        "dtype": "int8", "metrics": {"match_rate": 0.5, "recall@10": 1}}


def test_a_good_manifest_validates_typed_and_unchanged_and_an_absent_one_is_none():
    manifest = validate_manifest(GOOD, "model", "c")
    assert isinstance(manifest, ModelManifestSchema) and manifest.to_dict() == GOOD
    assert (manifest.version, manifest.model.kind, manifest.fingerprint.count) == (3, "smoothmax", 80)
    assert validate_manifest(None, "model", "c") is None and validate_manifest({}, "pq", "c") is None
    assert validate_manifest({**GOOD, "future_field": [1]}, "model", "c").to_dict()["future_field"] == [1]


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


def test_a_read_is_its_slots_class_and_as_schema_refuses_another():
    policy = validate_manifest(POLICY, "policy", "c")
    assert isinstance(policy, PolicyManifestSchema) and isinstance(policy, ManifestSchema)
    assert as_schema(policy, PolicyManifestSchema) is policy and as_schema(None, ModelManifestSchema) is None
    with pytest.raises(ManifestError, match="a ModelManifestSchema was expected"):
        as_schema(policy, ModelManifestSchema)


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
    assert parse_manifest_json(json.dumps(GOOD), "model", "c").to_dict() == GOOD


POLICY = {"version": 1, "kind": "two-pass", "ef": 8, "second_ef": 64, "certificate": "s1", "threshold": -0.5,
          "guard_low": [0.2], "guard_high": [0.9], "target": 0.9, "key_count": 100, "fallback_ef": 32,
          "break_even": 0.3, "measured": {"recall": 0.95, "escalated": 0.2, "held_out": 300}}


@pytest.mark.parametrize("text", [b'{"version": NaN}', b'{"version": 1, "x": Infinity}', b'{"version": -Infinity}'])
def test_nan_and_infinity_literals_in_a_manifest_file_are_not_json(text):
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest_json(text, "policy", "c")


@pytest.mark.parametrize("field, value", [
    ("threshold", float("nan")), ("threshold", float("inf")), ("threshold", 10 ** 400), ("target", float("nan")),
    ("target", 1.5), ("target", 0), ("break_even", -1e9), ("break_even", 1.5), ("break_even", float("inf")),
    ("guard_low", [float("-inf")]), ("measured", {"qps": float("nan")}), ("measured", {"recall": "high"}),
    ("classifier", {"mean": [0, 0, 0], "scale": [1, 0, 1], "weights": [0, 1, 1, 1]}),
])
def test_policy_numbers_must_be_finite_and_in_range(field, value):
    with pytest.raises(ManifestError, match=f"{field}.*; clear it with `amips tune c"):
        validate_manifest({**POLICY, field: value}, "policy", "c")


@pytest.mark.parametrize("slot, manifest", [
    ("model", {**GOOD, "metrics": {"e_rel": float("nan")}}),
    ("pq", {**GOOD, "subspaces": 4, "score_threshold": float("inf")}),
])
def test_other_manifests_refuse_non_finite_numbers_and_amips_never_writes_one(slot, manifest):
    manifest = {k: v for k, v in manifest.items() if slot == "model" or k not in ("model", "dtype", "metrics")}
    with pytest.raises(ManifestError, match="malformed"):
        validate_manifest({**manifest, "slot": slot}, slot, "c")
    with pytest.raises(ManifestError, match="refusing to store.*nothing was written"):
        check_outgoing({**manifest, "slot": slot}, slot, "c")


@pytest.mark.parametrize("change", [{"logit_scale": 0.0}, {"logit_scale": float("inf")}, {"min_confidence": 1.5}])
def test_router_headers_need_a_positive_scale_and_a_probability_gate(change):
    header = {"format": "amips-router", "tensors": [], "logit_scale": 3.0, "min_confidence": 0.1, "sublists": 1,
              "coarse_candidates": 2}
    assert validate_header(header, "amips-router") is header
    with pytest.raises(ArtifactError, match="header is invalid"):
        validate_header({**header, **change}, "amips-router")


@pytest.mark.parametrize("change, reason", [
    ({"threshold": 1e300}, "threshold 1e\\+300 is outside \\[-0.9, -0.2\\]"), ({"threshold": -1e300}, "outside"),
    ({"second_ef": 8}, "the second pass \\(hnsw_ef 8\\) is not above the first \\(hnsw_ef 8\\)"),
    ({"fallback_ef": 4}, "the fallback \\(hnsw_ef 4\\) is below the first pass \\(hnsw_ef 8\\)"),
    ({"guard_low": [0.9], "guard_high": [0.2]}, "guard_low exceeds guard_high"),
    ({"guard_high": None}, "inconsistent"), ({"threshold": float("nan")}, "threshold: .*finite number"),
    ({"break_even": -1e9, "fallback_ef": 1}, "break_even: Input should be greater than or equal to 0"),
    ({"fallback_ef": 1}, "the fallback \\(hnsw_ef 1\\) is below the first pass \\(hnsw_ef 8\\)"),
    ({"break_even": 1.5}, "break_even: Input should be less than or equal to 1"),
])
def test_policies_tune_could_not_have_written_are_malformed(change, reason):
    assert sp.Policy.from_manifest(POLICY).threshold == -0.5  # within [-0.9, -0.2]: flags the low-s₁ queries
    with pytest.raises(ArtifactError, match=f"malformed \\(.*{reason}"):
        sp.Policy.from_manifest({**POLICY, **change})


def test_a_classifier_threshold_must_cut_inside_the_logits_of_its_calibrated_range():
    classifier = {"mean": [0.0, 0.0, 0.0], "scale": [1.0, 2.0, 1.0], "weights": [0.5, -1.0, 2.0, 0.0]}
    box = {**POLICY, "certificate": "classifier", "classifier": classifier, "guard_low": [0.0, 0.0, 0.0],
           "guard_high": [1.0, 1.0, 1.0]}  # logits 0.5 − z₀ + z₁: from −0.5 to 1.5
    for inside in (-0.5, 0.0, 1.5):
        assert sp.Policy.from_manifest({**box, "threshold": inside}).threshold == inside
    for outside in (-0.6, 1.6):
        with pytest.raises(ArtifactError, match="outside \\[-0.5, 1.5\\]"):
            sp.Policy.from_manifest({**box, "threshold": outside})


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
    for limit, candidates, params in [(10_001, None, SearchParams()), (1, 0, SearchParams()),
                                      (1.5, None, SearchParams()), (1, None, SearchParams(hnsw_ef=-5)),
                                      (1, None, SearchParams(oversampling=0.99))]:
        with pytest.raises(InputError, match="must be"):
            check_search_inputs(limit, candidates, params)


def test_query_norm_bound():
    check_query_norms(np.full((2, 4), 4e17, dtype=np.float32))  # norm 8e17
    with pytest.raises(InputError, match="row 1"):
        check_query_norms(np.array([[1.0, 0.0], [1e19, 0.0]], dtype=np.float32))


def test_the_query_paths_one_pass_check_accepts_and_refuses_what_the_two_checks_do():
    ok = check_queries(np.full((3, 4), 0.5, dtype=np.float16), 4)
    assert ok.dtype == np.float32 and ok.flags.c_contiguous and (ok == 0.5).all()
    many_large = np.full((64, 4), 4e17, dtype=np.float32)  # each norm 8e17 is allowed; their sum of squares is not
    assert check_queries(many_large, 4) is not None
    for bad, message in ((np.array([[1.0, np.nan]]), "NaN or infinite"), (np.array([[1e19, 0.0]]), "norm above"),
                         (np.array([[1e300, 0.0]]), "NaN or infinite"), (np.ones((2, 3)), "dimension 3"),
                         (np.ones((1, 2), dtype=np.longdouble), "dtype"), (np.ones((1, 2), dtype=np.int64), "dtype")):
        with pytest.raises(InputError, match=message):
            check_queries(bad, 2)


@pytest.mark.parametrize("text, secret", [
    ("cannot reach Qdrant at https://bob:pa55word@db.example:6333 after 3 attempts", "pa55word"),
    ("cannot open store 'http://token@host:6333': refused", "token"),
    ("headers {'api-key': 'k3y-value'}", "k3y-value"),
    ("request failed with api_key=abcdef123&x=1", "abcdef123"),
    ("cannot open 'http://user:S3CR/ETpw@127.0.0.1:1'", "S3CR"), ("at http://user:Pa55@w0rd@host:1 now", "Pa55"),
    ("at http://host:1/?Token=T0k3n&x=1", "T0k3n"), ("at http://host:1?apikey=AK&key=K3y", "K3y"),
    ("at http://host:1/x?a=1&PASSWORD=pw9", "pw9"),
])
def test_secrets_are_redacted(text, secret):
    assert secret not in redact(text) and "***" in redact(text)


def test_a_store_urls_whole_user_info_is_a_secret_spaces_and_all():
    url = "http://user:s3cr3t w0rd@127.0.0.1:1"
    assert userinfo(url) == "user:s3cr3t w0rd" and userinfo("http://user:a@b@host") == "user:a@b"
    assert userinfo("http://host:6333") is None and userinfo("edge:dir") is None and userinfo(":memory:") is None
    assert redact(f"cannot reach Qdrant at {url} after 3 attempts", [userinfo(url)]) == (
        "cannot reach Qdrant at http://***@127.0.0.1:1 after 3 attempts")


def test_a_known_api_key_is_redacted_anywhere():
    assert redact("Unauthorized: key sk-live-42 rejected", ["sk-live-42"]) == "Unauthorized: key *** rejected"
    assert redact("no secrets at http://host:6333/collections") == "no secrets at http://host:6333/collections"
