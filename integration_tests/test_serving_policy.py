"""Serving policies on real stores: calibration on held-out queries, the certificate's escalation rule,
the fail-safe, stale / missing policies, and `amips tune` end to end (Edge: a real HNSW graph;
qdrant-client local mode: exact search)."""
import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from amips_plugin.adapters import SearchParams, open_store
from amips_plugin import collection_ops as ops
from amips_plugin import model_registry, tuning
from amips_plugin import calibration
from amips_plugin import serving_policy as sp
from amips_plugin.cli import main
from amips_plugin.core.errors import ArtifactError
from amips_plugin.core.manifest_schema import validate_manifest
from amips_plugin.models import ModelConfig
from amips_plugin.rewriting import QueryRewriter

pytestmark = pytest.mark.slow  # trains models and drives real stores; `pytest -m 'not slow'` skips it

FIRST_EF, SECOND_EF, TARGET = 8, 128, 0.97


@pytest.fixture(scope="module")
def hard_edge(tmp_path_factory):
    """4,000 random 64-d keys in Edge: HNSW at ef 8 finds the argmax for only ≈ 65% of random queries."""
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((4000, 64)).astype(np.float32)
    queries = rng.standard_normal((6000, 64)).astype(np.float32)
    store = open_store(f"edge:{tmp_path_factory.mktemp('hard')}")
    ops.ingest(store, "c", keys)
    truth = (queries @ keys.T).argmax(axis=1)
    yield store, keys, queries, truth
    store.close()


def _passes(store, queries, truth):
    first = store.search("c", queries, sp.DEPTH, SearchParams(hnsw_ef=FIRST_EF))
    second = store.search("c", queries, sp.DEPTH, SearchParams(hnsw_ef=SECOND_EF))
    return first, first.ids[:, 0] == truth, second.ids[:, 0] == truth


def _recall(store, queries, truth, policy):
    result, escalated = sp.serve(store, "c", queries, 10, policy)
    return float(np.mean(result.ids[:, 0] == truth)), escalated


def test_calibrated_s1_threshold_meets_the_target_on_unseen_queries_and_misses_it_when_forced(hard_edge):
    store, _, queries, truth = hard_edge
    calib, unseen = slice(0, 3000), slice(3000, 6000)
    first, hit1, hit2 = _passes(store, queries[calib], truth[calib])
    z = sp.features(queries[calib], first.scores, None)
    found = calibration.calibrate_threshold(sp.suspicion("s1", z), hit1, hit1 | hit2, TARGET)
    assert found is not None and found.lower_bound >= TARGET
    assert 0 < found.escalated < 3000  # neither trivial end
    policy = sp.Policy("two-pass", FIRST_EF, SECOND_EF, "s1", found.threshold)
    recall, escalated = _recall(store, queries[unseen], truth[unseen], policy)
    plain_first = float(np.mean(store.search("c", queries[unseen], 10, SearchParams(hnsw_ef=FIRST_EF)).ids[:, 0]
                                == truth[unseen]))
    # the bound holds for the query distribution; 3,000 unseen queries measure it within 2 binomial
    # standard deviations (Edge's HNSW graph also differs between builds)
    slack = 2 * np.sqrt(TARGET * (1 - TARGET) / 3000)
    assert plain_first < TARGET - 0.1 and recall >= TARGET - slack and 0 < escalated.mean() < 1
    # δ on the wrong side: the cut moved so that a third fewer queries are escalated
    scores = sp.suspicion("s1", z)
    lowered = float(np.quantile(scores, 1 - (2 / 3) * found.escalated / 3000))
    wrong = sp.Policy("two-pass", FIRST_EF, SECOND_EF, "s1", lowered)
    assert _recall(store, queries[unseen], truth[unseen], wrong)[0] < TARGET - slack


class _OracleSupport(torch.nn.Module):
    """σ(x) = max_y <x, y> exactly: a stand-in model for the margin certificate (sized, for the row chunks of
    inference.forward_in_chunks, like a SmoothMax model with one point per key)."""

    def __init__(self, keys: np.ndarray) -> None:
        super().__init__()
        self.keys = torch.from_numpy(keys)
        self.config = ModelConfig(kind="smoothmax", dim=keys.shape[1], width=1, points=len(keys))

    def head_scores(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.keys.T).max(dim=1, keepdim=True).values


def test_margin_certificate_escalates_every_query_the_first_pass_missed_by_more_than_delta(hard_edge):
    store, keys, queries, truth = hard_edge
    q = queries[:1000]
    first = store.search("c", q, sp.DEPTH, SearchParams(hnsw_ef=FIRST_EF))
    sigma = (q @ keys.T).max(axis=1)
    gap = (sigma - first.scores[:, 0]) / np.linalg.norm(q, axis=1)
    delta = 0.02
    policy = sp.Policy("two-pass", FIRST_EF, SECOND_EF, "margin", delta)
    result, escalated = sp.serve(store, "c", q, 10, policy, _OracleSupport(keys))
    assert (gap > delta).sum() > 50
    assert np.all(escalated[gap > delta])  # every query missed by more than δ is searched again
    assert not np.any(escalated[gap <= delta])  # and only those (no guard in this policy)
    assert np.all(result.scores[:, 0] >= first.scores[:, 0])  # never worse than the first pass
    assert np.mean(result.ids[:, 0] == truth[:1000]) > np.mean(first.ids[:, 0] == truth[:1000]) + 0.2


def test_unusual_queries_escalate_and_are_never_answered_worse_than_the_first_pass(hard_edge):
    store, _, queries, truth = hard_edge
    first, _, _ = _passes(store, queries[:1000], truth[:1000])
    z = sp.features(queries[:1000], first.scores, None)
    low, high = calibration.guard_range(z, [0])
    policy = sp.Policy("two-pass", FIRST_EF, SECOND_EF, "s1", threshold=1e9, guard_low=low, guard_high=high)
    # outside the calibrated s₁ range on either side, or no score at all (NaN), escalates whatever the threshold
    odd = np.array([[low[0] - 0.1, 0, 0], [high[0] + 0.1, 0, 0], [np.nan, 0, 0], [(low[0] + high[0]) / 2, 0, 0]])
    assert policy.escalate(odd).tolist() == [True, True, True, False]
    shifted = 3 * np.ones((200, 64), dtype=np.float32) + queries[:200]  # far off the query distribution
    strict = sp.Policy("two-pass", FIRST_EF, SECOND_EF, "s1", threshold=float(np.median(-z[:, 0])))
    result, escalated = sp.serve(store, "c", shifted, 10, strict)
    plain = store.search("c", shifted, 10, SearchParams(hnsw_ef=FIRST_EF))
    assert 0 < escalated.mean() < 1
    assert np.all(result.scores >= plain.scores)  # every rank at least as good as plain search at ef₁


def test_the_shift_guard_answers_by_plain_search_at_the_fallback_ef_while_queries_escalate_too_often(hard_edge):
    store, _, queries, truth = hard_edge
    first, _, _ = _passes(store, queries[:1000], truth[:1000])
    suspicion = sp.suspicion("s1", sp.features(queries[:1000], first.scores, None))
    usual = sp.Policy("two-pass", FIRST_EF, SECOND_EF, "s1", float(np.quantile(suspicion, 0.9)),
                      fallback_ef=64, break_even=0.3)
    guard = sp.ShiftGuard(usual.shift_limit)
    _, escalated = sp.serve(store, "c", queries[1000:3000], 10, usual, guard=guard)
    assert guard.answered_plain == 0 and 0.05 < escalated.mean() < 0.2  # in distribution: never engaged
    # queries it flags 90% of the time (as new topics are): after the batch's head, plain search at ef 64
    unusual = sp.Policy("two-pass", FIRST_EF, SECOND_EF, "s1", float(np.quantile(suspicion, 0.1)),
                        fallback_ef=64, break_even=0.3)
    guard = sp.ShiftGuard(unusual.shift_limit)
    q = queries[3000:5000]
    result, escalated = sp.serve(store, "c", q, 10, unusual, guard=guard)
    plain = store.search("c", q, 10, SearchParams(hnsw_ef=64))
    assert guard.answered_plain == 2000 - sp.GUARD_CHUNK  # the head (nothing seen yet) was two-pass
    np.testing.assert_array_equal(result.ids[sp.GUARD_CHUNK:], plain.ids[sp.GUARD_CHUNK:])
    assert not escalated[sp.GUARD_CHUNK:].any() and escalated[:sp.GUARD_CHUNK].mean() > 0.8
    for _ in range(8):  # batch heads 1..8: the 8th is a probe, served two-pass; the rest of a batch never is
        sp.serve(store, "c", q[:512], 10, unusual, guard=guard)
    assert guard.answered_plain == 2000 - sp.GUARD_CHUNK + 8 * 512 - sp.GUARD_CHUNK

    # through the query path: the rewriter keeps one guard per collection and says what it did
    tuning.publish_policy(store, "c", unusual,
                          ops.read_keys(store, "c")[2], store.read_manifest("c", sp.SLOT))
    rewriter = QueryRewriter(store)
    rewriter.search("c", q[:256], 10, mode="auto")
    _, report = rewriter.search("c", q[256:512], 10, mode="auto")
    assert any("256 of 256 queries got plain search at hnsw_ef 64" in note for note in report.notes)


def test_tune_stores_a_policy_that_meets_its_target_on_unseen_queries(hard_edge):
    store, _, queries, truth = hard_edge
    grid = (8, 12, 16, 24, 32, 48, 64, 96, 128, 256)  # efforts below plain's (ef 64) for plans to start at
    # best of 3 timing rounds: which first passes can pay, and each certificate's pick, rest on measured costs
    report = tuning.tune(store, "c", queries[:2000], TARGET, repeats=3, ef_grid=grid,
                         certificates=("s1", "classifier"))
    assert report.chosen.lower_bound >= TARGET and report.manifest["version"] >= 1
    policy, _, reason = sp.stored_policy(store, "c", 64, 4000, QueryRewriter(store).model_for)
    assert reason is None and policy == sp.Policy.from_manifest(report.manifest)
    recall, _ = _recall(store, queries[2000:], truth[2000:], policy)
    assert recall >= TARGET - 2 * np.sqrt(TARGET * (1 - TARGET) / 4000)  # within the check's own sampling error
    two_pass = [row.policy for row in report.rows if row.policy.kind == "two-pass"]
    assert two_pass and all(p.fallback_ef == report.plain.policy.ef and p.break_even > 0 for p in two_pass)
    assert all(p.first.below(report.plain.policy.first) for p in two_pass)  # a plan never starts at plain's effort
    names = [row.name for row in report.rows]
    assert any(n.startswith("two-pass s1") for n in names) and any(n.startswith("two-pass classifier") for n in names)

    from amips_plugin.client import AmipsClient  # the application's client serves the tuned policy by default
    from qdrant_client import models
    client = AmipsClient(store)
    hits = client.query_batch_points("c", [models.QueryRequest(query=q.tolist(), limit=3) for q in queries[2000:]])
    assert client.last_report.mode == "auto" and client.last_report.fallback_reason is None
    assert policy.describe() in client.last_report.notes[0]
    # the same answers as the policy served with its shift guard (which, where two passes barely pay, may answer
    # part of a batch by the plain search that meets the target), and the target met
    guard = sp.ShiftGuard(policy.shift_limit, policy.tuned_share) if policy.shift_limit is not None else None
    expected, _ = sp.serve(store, "c", queries[2000:], 3, policy, guard=guard)
    assert [r.points[0].id for r in hits] == expected.ids[:, 0].tolist()
    served = np.mean([r.points[0].id == t for r, t in zip(hits, truth[2000:])])
    assert served >= TARGET - 2 * np.sqrt(TARGET * (1 - TARGET) / 4000)

    # one query a call: the plan is timed against plain search, and calls it does not pay on get plain search
    row = next(r for r in report.rows if r.policy.kind == "two-pass")
    timed = tuning.with_min_batch(store, "c", queries[:2000], 10, row, report.plain, None, SearchParams(), 1)
    assert timed.min_batch is not None and 1 <= timed.min_batch <= 2000 and timed.problem() is None
    assert (timed.min_batch == 1) == (row.singles["single_qps"] > row.singles["plain_single_qps"])
    if report.chosen.policy.kind == "two-pass":
        assert report.manifest["min_batch"] >= 1 and report.manifest["measured"]["plain_single_qps"] > 0
    store.write_manifest("c", {**report.manifest, **replace(row.policy, min_batch=4).to_manifest()}, sp.SLOT)
    try:
        plain_ids = store.search("c", queries[2000:2003], 3, SearchParams(hnsw_ef=report.plain.policy.ef)).ids
        requests = [models.QueryRequest(query=q.tolist(), limit=3) for q in queries[2000:2004]]
        small = client.query_batch_points("c", requests[:3])
        assert [[p.id for p in r.points] for r in small] == plain_ids.tolist() and client.last_report.escalated == 0
        assert "only in calls of at least 4 queries (this one has 3)" in client.last_report.notes[-1]
        client.query_batch_points("c", requests)  # served as the policy says (two-pass, or its guard's plain search)
        assert not any("only in calls of at least" in note for note in client.last_report.notes)
    finally:
        store.write_manifest("c", report.manifest, sp.SLOT)


@pytest.mark.parametrize("kind", ["local", "edge"])
def test_missing_stale_and_malformed_policies_mean_plain_search_with_a_reason(tmp_path, kind):
    """Also: the query path keeps a usable policy between calls while the store can tell that its manifest did
    not change (Edge: the file's identity; qdrant-client: its kept description of the collection, which this
    store's own writes renew), and every change below reaches the very next call."""
    rng = np.random.default_rng(1)
    keys, queries = rng.standard_normal((300, 16)).astype(np.float32), rng.standard_normal((400, 16)).astype(np.float32)
    store = open_store(str(tmp_path / "local") if kind == "local" else f"edge:{tmp_path / 'edge'}")
    ops.ingest(store, "c", keys)
    rewriter = QueryRewriter(store)
    result, report = rewriter.search("c", queries[:5], 3, mode="auto")
    assert "no serving policy" in report.fallback_reason
    assert np.array_equal(result.ids, store.search("c", queries[:5], 3, SearchParams()).ids)
    tuning.tune(store, "c", queries, 0.95, repeats=1, ef_grid=(16, 32))
    _, report = rewriter.search("c", queries[:5], 3, mode="auto")
    assert report.fallback_reason is None and "of 5 queries escalated" in report.notes[-1]
    reads = []
    read_manifest = store.read_manifest
    store.read_manifest = lambda *args: reads.append(args) or read_manifest(*args)
    _, report = rewriter.search("c", queries[:5], 3, mode="auto")
    assert report.fallback_reason is None and not reads
    del store.read_manifest
    assert ops.status(store, "c")["policy"]["stale"] is False
    model_registry.mark_stale(store, "c")  # the flag alone (a write through amips)
    _, report = rewriter.search("c", queries[:5], 3, mode="auto")
    assert "stale" in report.fallback_reason
    manifest = tuning.tune(store, "c", queries, 0.95, repeats=1, ef_grid=(16, 32)).manifest
    store.write_manifest("c", {**manifest, "fingerprint": {**manifest["fingerprint"], "count": 299}},
                         sp.SLOT)  # the count alone (as after another client's write)
    _, report = rewriter.search("c", queries[:5], 3, mode="auto")
    assert "built on 299 keys" in report.fallback_reason
    store.write_manifest("c", manifest, sp.SLOT)
    ops.ingest(store, "c", keys[:10])  # an append marks the policy stale
    _, report = rewriter.search("c", queries[:5], 3, mode="auto")
    assert "stale" in report.fallback_reason
    assert ops.status(store, "c")["policy"]["stale"] is True
    store.write_manifest("c", {"kind": "two-pass", "ef": 8}, sp.SLOT)  # no certificate, threshold, second ef
    _, report = rewriter.search("c", queries[:5], 3, mode="auto")
    assert "cannot be read" in report.fallback_reason
    store.close()


def test_a_policy_reading_the_model_goes_stale_when_the_model_changes():
    policy = sp.Policy("two-pass", 8, 64, "margin", 0.1, model_sha256="a" * 64)

    class Store:
        def read_manifest(self, collection, slot):
            return validate_manifest({**policy.to_manifest(), "version": 1, "stale": False, "bound_to": None,
                                      "fingerprint": {"count": 100}}, slot, collection)

        def write_stamp(self, collection):
            return None

        def storage(self, collection):
            return None  # as qdrant-client's local mode: no storage to compare

    model = object()
    same, other = SimpleNamespace(sha256="a" * 64), SimpleNamespace(sha256="b" * 64)  # the model manifest's checksum
    assert sp.stored_policy(Store(), "c", 16, 100, lambda *a: (model, same, None))[1:] == (model, None)
    assert "model it reads changed" in sp.stored_policy(Store(), "c", 16, 100, lambda *a: (model, other, None))[2]
    assert "cannot be used" in sp.stored_policy(Store(), "c", 16, 100, lambda *a: (None, None, "no model"))[2]
    assert "stale" in sp.stored_policy(Store(), "c", 16, 101, lambda *a: (model, same, None))[2]


def test_tune_command_round_trip_on_edge(tmp_path):
    rng = np.random.default_rng(2)
    keys, queries = (rng.standard_normal((1500, 32)).astype(np.float32),
                     rng.standard_normal((400, 32)).astype(np.float32))
    np.save(tmp_path / "keys.npy", keys)
    np.save(tmp_path / "q.npy", queries)
    store = ["--store", f"edge:{tmp_path / 'edge'}"]

    def run(*args):
        return CliRunner().invoke(main, [*store, *map(str, args)])

    assert run("ingest", "c", tmp_path / "keys.npy").exit_code == 0
    out = run("tune", "c", "--queries", tmp_path / "q.npy", "--target-recall", "0.9", "--repeats", "1",
              "--plot", tmp_path / "f.png")
    assert out.exit_code == 0, out.output
    assert "plain ef" in out.output and "stored as policy v1" in out.output and (tmp_path / "f.png").stat().st_size
    status = run("status", "c")
    assert "policy v1:" in status.output and "fresh" in status.output
    found = json.loads(run("search", "c", "--queries", tmp_path / "q.npy", "--mode", "auto", "--json").output)
    assert found["fallback_reason"] is None and "escalated" in found["notes"][-1]
    bad = run("tune", "c", "--queries", tmp_path / "q.npy", "--target-recall", "1.5")
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    few = tmp_path / "few.npy"
    np.save(few, queries[:50])
    bad = run("tune", "c", "--queries", few, "--target-recall", "0.9")
    assert bad.exit_code == 1 and "at least 200" in bad.output


def test_policy_manifest_round_trips_and_rejects_garbage():
    classifier = sp.Classifier((0.0, 1.0, 2.0), (1.0, 1.0, 1.0), (0.5, -1.0, 0.0, 0.0))
    policy = sp.Policy("two-pass", 8, 64, "classifier", 0.3, classifier, (0, 0, 0), (1, 1, 1), 0.99, None,
                       measured={"qps": 1.0})
    assert sp.Policy.from_manifest(json.loads(json.dumps(policy.to_manifest()))) == sp.Policy.from_manifest(
        policy.to_manifest())
    for bad in ({}, {"kind": "plain", "ef": "x"}, {"kind": "fast", "ef": 8},
                {**policy.to_manifest(), "classifier": {"mean": [0], "scale": [1], "weights": [1, 2, 3]}},
                {**policy.to_manifest(), "guard_low": [0.0]}):
        with pytest.raises(ArtifactError):
            sp.Policy.from_manifest(bad)


def _strict_json(text):
    """json.loads that refuses NaN / Infinity, as any RFC 8259 parser does."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON output"))


@pytest.mark.parametrize("change", [
    {"threshold": float("nan")}, {"threshold": float("inf")}, {"threshold": 1e300},
    {"break_even": -1e9, "fallback_ef": 1}, {"second_ef": 8}, {"guard_low": [10.0], "guard_high": [-10.0]},
    {"target": float("nan")}, {"measured": {"recall": float("nan")}},
])
def test_absurd_policy_values_mean_plain_search_with_a_reason_and_status_never_says_fresh(tmp_path, change):
    """Values no `amips tune` writes (hand-edited, or another client's): before, a NaN / Infinity / 1e300 threshold
    escalated no query and ef 1 served everything, all under a fresh policy, and `status --json` printed NaN."""
    rng = np.random.default_rng(3)
    keys, queries = rng.standard_normal((300, 16)).astype(np.float32), rng.standard_normal((20, 16)).astype(np.float32)
    np.save(tmp_path / "q.npy", queries)
    store = open_store(f"edge:{tmp_path / 'edge'}")
    ops.ingest(store, "c", keys)
    good = sp.Policy("two-pass", 8, 64, "s1", 0.0, guard_low=(-10.0,), guard_high=(10.0,), target=0.9,
                     fallback_ef=32, break_even=0.3, measured={"recall": 0.95, "escalated": 0.2})
    manifest = tuning.publish_policy(store, "c", good, ops.read_keys(store, "c")[2], None)
    assert QueryRewriter(store).search("c", queries, 3, mode="auto")[1].fallback_reason is None
    (store._model_dir("c") / "policy.json").write_text(json.dumps({**manifest, **change}))  # NaN as JSON's NaN literal
    result, report = QueryRewriter(store).search("c", queries, 3, mode="auto")
    assert "serving policy cannot be read" in report.fallback_reason
    np.testing.assert_array_equal(result.ids, store.search("c", queries, 3, SearchParams()).ids)
    store.close()

    spec = ["--store", f"edge:{tmp_path / 'edge'}"]
    status = _strict_json(CliRunner().invoke(main, [*spec, "status", "c", "--json"]).output)["policy"]
    assert "error" in status or status["stale"] is True
    text = CliRunner().invoke(main, [*spec, "status", "c"]).output
    assert "policy" in text and "fresh" not in text.split("policy", 1)[1]
    found = _strict_json(CliRunner().invoke(main, [*spec, "search", "c", "--queries", str(tmp_path / "q.npy"),
                                                   "--mode", "auto", "--json"]).output)
    assert "serving policy cannot be read" in found["fallback_reason"]


def test_a_quantized_collection_tunes_oversampling_with_hnsw_ef_and_serves_its_target(tmp_path):
    """Issue 23: on a vector with int8 copies every pass is an (hnsw_ef, oversampling) setting; the stored
    policy names both, and `--mode auto` meets the target on unseen queries."""
    rng = np.random.default_rng(4)
    keys, queries = (rng.standard_normal((4000, 64)).astype(np.float32),
                     rng.standard_normal((5000, 64)).astype(np.float32))
    truth = (queries @ keys.T).argmax(axis=1)
    store = open_store(f"edge:{tmp_path}")
    try:
        ops.ingest(store, "c", keys, quantization="int8")
        report = tuning.tune(store, "c", queries[:2500], TARGET, repeats=1, ef_grid=(8, 16, 32, 64, 128, 256),
                             certificates=("s1",), oversampling_grid=(1.0, 2.0))
        tried = {row.policy.first for row in report.rows}
        assert {effort.oversampling for effort in tried} <= {1.0, 2.0} and len(tried) > 1
        stored = sp.Policy.from_manifest(report.manifest)
        assert stored.oversampling in (1.0, 2.0)
        result, served = QueryRewriter(store).search("c", queries[2500:], 10, mode="auto")
        assert served.fallback_reason is None and "oversampling" in served.notes[0]
        recall = float(np.mean(result.ids[:, 0] == truth[2500:]))
        assert recall >= TARGET - 2 * np.sqrt(TARGET * (1 - TARGET) / 2500)
    finally:
        store.close()


def test_a_store_that_searches_exactly_is_not_tuned_and_says_so(tmp_path):
    rng = np.random.default_rng(5)
    keys, queries = rng.standard_normal((300, 16)).astype(np.float32), rng.standard_normal((400, 16)).astype(np.float32)
    store = open_store(str(tmp_path / "local"))
    try:
        ops.ingest(store, "c", keys)
        report = tuning.tune(store, "c", queries, 0.95, repeats=1)
        assert [row.policy.kind for row in report.rows] == ["plain"] and report.chosen is report.plain
        assert "searches exactly" in report.verdict() and report.notes
        assert report.manifest["kind"] == "plain"
    finally:
        store.close()
