"""A Qdrant user's first hour (issue 24): through the application's own QdrantClient, a query costs the
round trips plain search costs, and no more."""
from collections import Counter

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from amips_plugin.adapters import qdrant_client_store
from amips_plugin.client import AmipsClient


class _Counting:
    """The wrapped client, counting the calls made through it."""

    def __init__(self, client, calls: Counter) -> None:
        self._client, self._calls = client, calls

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self._calls[name] += 1
            return attr(*args, **kwargs)

        return call


def _users_collection(tmp_path, keys: np.ndarray, using: str | None = None) -> QdrantClient:
    """Collection "docs" holding `keys` under ids 0..N−1 (in the vector `using`, None: unnamed), made by the
    application's own client (local mode)."""
    app = QdrantClient(path=str(tmp_path / "local"))
    params = models.VectorParams(size=keys.shape[1], distance=models.Distance.DOT)
    app.create_collection("docs", vectors_config=params if using is None else {using: params})
    vectors = keys.tolist() if using is None else {using: keys.tolist()}
    app.upsert("docs", points=models.Batch(ids=list(range(len(keys))), vectors=vectors), wait=True)
    return app


@pytest.mark.parametrize("using", [None, "text"])
@pytest.mark.parametrize("tuned", [False, True])
def test_each_query_through_the_users_client_is_one_store_call(tmp_path, monkeypatch, using, tuned):
    """Before: every call also ran an exact `count` (3.6 of 4.1 s over 30 queries) and read the collection
    three times (manifests, stamp); a server pays each as a round trip. A named vector's manifests were
    read again on every query (its view of the store had no manifest token), with or without a policy."""
    monkeypatch.setattr(qdrant_client_store, "SPACES_TTL_SECONDS", 600.0)  # this test's queries fit any window
    rng = np.random.default_rng(0)
    keys, queries = rng.standard_normal((500, 16)).astype(np.float32), rng.standard_normal((30, 16)).astype(np.float32)
    app = _users_collection(tmp_path, keys, using)
    client = AmipsClient(app)
    if tuned:
        client.tune("docs", rng.standard_normal((200, 16)).astype(np.float32), target_recall=0.9, using=using,
                    progress=False)
    client.query_points("docs", query=queries[0].tolist(), using=using, limit=5, with_payload=False)  # reads the config
    calls: Counter = Counter()
    client.store.client._client = _Counting(client.store.client._client, calls)
    for query in queries:
        hits = client.query_points("docs", query=query.tolist(), using=using, limit=5, with_payload=False).points
        assert [h.id for h in hits] == (keys @ query).argsort()[::-1][:5].tolist()
    report = client.last_report
    assert report.mode == "auto"
    if tuned:
        assert report.fallback_reason is None and "plain search" in report.notes[0]
    else:
        assert "no serving policy" in report.fallback_reason
    assert sum(calls.values()) == len(queries) and set(calls) == {"query_points"}, calls  # the call plain search makes
    app.close()


def test_a_sample_too_small_for_the_target_is_refused_with_the_size_it_needs(tmp_path):
    """Issue 24.4: 807 queries hold out 404; a 0.99 policy tuned on them reached 0.9832 on unseen queries."""
    import pytest

    from amips_plugin import collection_ops as ops
    from amips_plugin import tuning
    from amips_plugin.adapters import open_store
    from amips_plugin.core.errors import InputError

    rng = np.random.default_rng(1)
    store = open_store(f"edge:{tmp_path}")
    try:
        ops.ingest(store, "c", rng.standard_normal((300, 16)).astype(np.float32))
        queries = rng.standard_normal((807, 16)).astype(np.float32)
        with pytest.raises(InputError, match=r"807 sample queries hold out 404 .* recall@1 0.99 needs at least 477 "
                                             r"\(a sample of 953\)"):
            tuning.tune(store, "c", queries, 0.99)
        assert store.read_manifest("c", "policy") is None
        assert tuning.tune(store, "c", queries, 0.95, repeats=1, ef_grid=(16, 32)).manifest is not None
        # enough to promise plain search, too few to certify a two-pass plan on queries that did not pick it
        report = tuning.tune(store, "c", rng.standard_normal((1000, 16)).astype(np.float32), 0.99, repeats=1,
                             ef_grid=(16, 32))
        # no two-pass row at all (the plain rows listed are those measured no dearer than the chosen one: on 300
        # keys, below the engine's indexing threshold, ef 16 and ef 32 are the same scan and either can be)
        assert report.chosen.policy.kind == "plain" and {row.policy.kind for row in report.rows} == {"plain"}
        assert report.notes == ["1,000 sample queries certify two-pass plans on 250; recall@1 0.99 needs 477 "
                                "(a sample of 1,907)"]
    finally:
        store.close()


def test_truth_of_row_numbers_on_a_uuid_collection_is_refused_and_show_prints_payloads(tmp_path):
    """Issue 24.7: it read as recall 0.0; `--show` printed `uuid:score` alone."""
    import uuid

    from click.testing import CliRunner

    from amips_plugin import collection_ops as ops
    from amips_plugin.adapters import open_store
    from amips_plugin.cli import main

    rng = np.random.default_rng(2)
    keys, queries = rng.standard_normal((400, 16)).astype(np.float32), rng.standard_normal((20, 16)).astype(np.float32)
    ids = [str(uuid.UUID(int=int(i) + 1)) for i in range(400)]
    store = open_store(f"edge:{tmp_path / 'st'}")
    ops.ingest(store, "docs", keys, ids=ids, payloads=[{"title": f"doc {i}"} for i in range(400)])
    store.close()
    rows = (queries @ keys.T).argmax(axis=1)
    np.save(tmp_path / "q.npy", queries)
    np.save(tmp_path / "rows.npy", rows)
    np.save(tmp_path / "uuids.npy", np.array([ids[r] for r in rows]))

    def amips(*args):
        return CliRunner().invoke(main, ["--store", f"edge:{tmp_path / 'st'}", *map(str, args)])

    refused = amips("search", "docs", "--queries", tmp_path / "q.npy", "--truth", tmp_path / "rows.npy", "--exact")
    assert refused.exit_code == 1 and "not points of 'docs'" in refused.output and "UUIDs here" in refused.output
    right = amips("search", "docs", "--queries", tmp_path / "q.npy", "--truth", tmp_path / "uuids.npy", "--exact",
                  "--show", "1", "--limit", "3")
    assert right.exit_code == 0 and "recall@1=1.0" in right.output, right.output
    assert f'{ids[rows[0]]}' in right.output and f'"title": "doc {rows[0]}"' in right.output


def test_tune_draws_at_most_max_queries_at_random(tmp_path):
    """Issue 24.6: 55,544 questions took 38 minutes with no way to bound it."""
    import json

    from click.testing import CliRunner

    from amips_plugin.cli import main

    rng = np.random.default_rng(3)
    np.save(tmp_path / "keys.npy", rng.standard_normal((1000, 16)).astype(np.float32))
    np.save(tmp_path / "q.npy", rng.standard_normal((1000, 16)).astype(np.float32))
    store = ["--store", f"edge:{tmp_path / 'st'}"]
    assert CliRunner().invoke(main, [*store, "ingest", "c", str(tmp_path / "keys.npy"), "--quiet"]).exit_code == 0
    tuned = CliRunner().invoke(main, [*store, "tune", "c", "--queries", str(tmp_path / "q.npy"), "--target-recall",
                                      "0.9", "--repeats", "1", "--max-queries", "300", "--json", "--quiet"])
    assert tuned.exit_code == 0, tuned.output
    assert json.loads(tuned.output)["held_out"] == 150  # 300 drawn; half held out


def test_a_write_through_amips_client_makes_what_was_built_before_it_stale(tmp_path):
    """An overwrite keeps the point count: only the write stamp, which AmipsClient's upsert bumps, tells."""
    from amips_plugin import tuning

    rng = np.random.default_rng(4)
    keys, queries = rng.standard_normal((300, 16)).astype(np.float32), rng.standard_normal((400, 16)).astype(np.float32)
    app = _users_collection(tmp_path, keys)
    client = AmipsClient(app)
    tuning.tune(client.store, "docs", queries, 0.95, repeats=1)
    client.query_points("docs", query=queries[0].tolist(), limit=3)
    assert client.last_report.fallback_reason is None
    client.upsert("docs", points=[models.PointStruct(id=7, vector=(-keys[7]).tolist())], wait=True)
    client.query_points("docs", query=queries[0].tolist(), limit=3)
    assert "stale" in client.last_report.fallback_reason
    app.close()


def test_filtered_queries_under_auto_get_the_plain_setting_that_met_the_target(tmp_path):
    """Issue 24.3: the two-pass certificate is calibrated without filters (filtered recall fell 0.983 → 0.953)."""
    from amips_plugin import collection_ops as ops
    from amips_plugin import serving_policy as sp
    from amips_plugin import tuning
    from amips_plugin.adapters import SearchParams, open_store
    from amips_plugin.rewriting import QueryRewriter

    rng = np.random.default_rng(6)
    keys, queries = rng.standard_normal((3000, 32)).astype(np.float32), rng.standard_normal((50, 32)).astype(np.float32)
    store = open_store(f"edge:{tmp_path}")
    try:
        ops.ingest(store, "c", keys, payloads=[{"lang": "en" if i % 3 else "fr"} for i in range(3000)])
        policy = sp.Policy("two-pass", 8, 64, "s1", -1.0, fallback_ef=48, break_even=0.5)
        tuning.publish_policy(store, "c", policy, ops.read_keys(store, "c")[2], None)
        french = models.Filter(must=[models.FieldCondition(key="lang", match=models.MatchValue(value="fr"))])
        result, report = QueryRewriter(store).search("c", queries, 5, mode="auto", params=SearchParams(filter=french))
        assert report.fallback_reason is None and "filtered: plain search at hnsw_ef 48" in report.notes[-1]
        expected = store.search("c", queries, 5, SearchParams(hnsw_ef=48, filter=french))
        np.testing.assert_array_equal(result.ids, expected.ids)
        assert (result.ids % 3 == 0).all()  # the filter held
        _, unfiltered = QueryRewriter(store).search("c", queries, 5, mode="auto")
        assert "queries escalated" in unfiltered.notes[-1]  # the two-pass policy itself
    finally:
        store.close()


def test_query_arrays_answers_as_query_points_does_without_its_objects(tmp_path):
    """The array path: the same hits and scores as `query_batch_points` under the tuned policy, a filter held,
    UUID ids as text, and calls smaller than the policy's min_batch searched plainly as there."""
    import uuid

    from amips_plugin import collection_ops as ops
    from amips_plugin import serving_policy as sp
    from amips_plugin import tuning

    rng = np.random.default_rng(8)
    keys, queries = rng.standard_normal((3000, 32)).astype(np.float32), rng.standard_normal((40, 32)).astype(np.float32)
    ids = [str(uuid.UUID(bytes=rng.bytes(16))) for _ in range(3000)]
    client = AmipsClient(f"edge:{tmp_path}")
    try:
        ops.ingest(client.store, "c", keys, ids=ids, payloads=[{"lang": "en" if i % 3 else "fr"} for i in range(3000)])
        policy = sp.Policy("two-pass", 8, 64, "s1", -1.0, fallback_ef=48, break_even=0.5, min_batch=4)
        tuning.publish_policy(client.store, "c", policy, ops.read_keys(client.store, "c")[2], None)
        french = models.Filter(must=[models.FieldCondition(key="lang", match=models.MatchValue(value="fr"))])
        for rows, flt in ((slice(0, 40), None), (slice(0, 3), None), (slice(0, 40), french)):
            found, scores = client.query_arrays("c", queries[rows], 5, query_filter=flt)
            notes = client.last_report.notes
            hits = client.query_batch_points("c", [models.QueryRequest(query=q.tolist(), limit=5, filter=flt,
                                                                       with_payload=False) for q in queries[rows]])
            assert client.last_report.notes == notes and found.dtype.kind == "U" and found.shape == (len(hits), 5)
            # a row the engine answers short (a filtered HNSW search can) is padded ("", −inf) here, cut there
            assert [[i for i in row if i] for row in found.tolist()] == [[p.id for p in r.points] for r in hits]
            assert ((found == "") == ~np.isfinite(scores)).all()
            for row, r in zip(scores, hits):
                np.testing.assert_allclose(row[np.isfinite(row)], [p.score for p in r.points], rtol=1e-6)
        assert "filtered" in notes[-1] and set(found.ravel().tolist()) <= {ids[i] for i in range(0, 3000, 3)}
        found, _ = client.query_arrays("c", queries[:3], 5)
        assert "only in calls of at least 4 queries" in client.last_report.notes[-1]
    finally:
        client.close()


def _edge_collection_with_a_model_free_policy(store_spec: str, keys: np.ndarray) -> None:
    """Collection "c" of `keys` with a two-pass s1 policy published directly (no torch, no tuning run)."""
    from amips_plugin import collection_ops as ops
    from amips_plugin import serving_policy as sp
    from amips_plugin import tuning
    from amips_plugin.adapters import open_store

    store = open_store(store_spec)
    ops.ingest(store, "c", keys)
    policy = sp.Policy("two-pass", 8, 64, "s1", -1.0, fallback_ef=48, break_even=0.5)
    tuning.publish_policy(store, "c", policy, ops.read_keys(store, "c")[2], None)
    store.close()


def test_the_query_path_serves_a_tuned_policy_without_importing_torch(tmp_path):
    """torch is imported only once a model is read: an application serving plain or model-free two-pass policies
    starts in ~1 s instead of ~3 s, and its garbage collector walks ~110,000 objects instead of ~250,000."""
    import subprocess
    import sys

    _edge_collection_with_a_model_free_policy(f"edge:{tmp_path}", np.random.default_rng(9).standard_normal(
        (2000, 16)).astype(np.float32))
    script = (
        "import sys, numpy as np\n"
        "from amips_plugin.client import AmipsClient\n"
        f"client = AmipsClient('edge:{tmp_path}')\n"
        "ids, _ = client.query_arrays('c', np.ones((20, 16), dtype=np.float32), 5)\n"
        "client.query_points('c', query=np.ones(16, dtype=np.float32), limit=5)\n"
        "assert client.last_report.fallback_reason is None and 'escalated' in client.last_report.notes[-1]\n"
        "print(ids.shape, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(20,", "5)", "False"]


def test_the_cli_commands_that_read_no_model_start_without_importing_torch(tmp_path):
    """`--help`, `ingest`, `search` and `status` read no model here, so they leave torch (~1.6 s of every command's
    start) unimported; the training defaults `--help` shows come from train_config. (`tune`, minutes long, imports
    it for the exact answers: the policy here is published directly.)"""
    import subprocess
    import sys

    rng = np.random.default_rng(10)
    np.save(tmp_path / "keys.npy", rng.standard_normal((1500, 16)).astype(np.float32))
    np.save(tmp_path / "queries.npy", rng.standard_normal((300, 16)).astype(np.float32))
    store = f"edge:{tmp_path / 'store'}"
    _edge_collection_with_a_model_free_policy(store, np.load(tmp_path / "keys.npy"))
    script = (
        "import sys\n"
        "from amips_plugin.cli import main\n"
        "def run(*args):\n"
        "    try:\n"
        f"        main(['--store', {store!r}, *args], standalone_mode=False)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "run('--help'); run('train', '--help')\n"
        f"run('ingest', 'd', {str(tmp_path / 'keys.npy')!r})\n"
        f"run('search', 'c', '--queries', {str(tmp_path / 'queries.npy')!r}, '--mode', 'auto')\n"
        "run('status', 'c')\n"
        "print('torch imported:', 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--time-budget" in done.stdout and "torch imported: False" in done.stdout
    assert "c: 1,500 points" in done.stdout and "policy v1: two-pass" in done.stdout  # the policy stayed fresh


def test_scored_points_carry_the_engines_point_version(tmp_path):
    """Issue 24.8: `ScoredPoint.version` was always 0. Qdrant numbers points by the write that last touched
    them, so points written again carry later versions than the rest; through the two-pass policy
    (first pass, escalated second pass, merge) each hit keeps its own, as plain Edge search reports it."""
    from amips_plugin import collection_ops as ops
    from amips_plugin import serving_policy as sp
    from amips_plugin import tuning

    rng = np.random.default_rng(8)
    keys = rng.standard_normal((3000, 32)).astype(np.float32)
    client = AmipsClient(f"edge:{tmp_path}")
    try:
        ops.ingest(client.store, "c", keys)
        rewritten = np.arange(0, 3000, 2)
        ops.ingest(client.store, "c", keys[rewritten], ids=rewritten, upsert=True)
        policy = sp.Policy("two-pass", 8, 64, "s1", -1.0, fallback_ef=48, break_even=0.5)
        tuning.publish_policy(client.store, "c", policy, ops.read_keys(client.store, "c")[2], None)
        queries = keys[:40] + 0.1 * rng.standard_normal((40, 32)).astype(np.float32)
        for batch in ([queries[:1]], [queries]):
            requests = [models.QueryRequest(query=q.tolist(), limit=8) for q in batch[0]]
            responses = client.query_batch_points("c", requests)
            assert "queries escalated" in client.last_report.notes[-1]
            points = [p for r in responses for p in r.points]
            again, once = {p.version for p in points if p.id % 2 == 0}, {p.version for p in points if p.id % 2 == 1}
            assert again and once and min(again) > max(once)
            plain = client.query_points("c", query=batch[0][0].tolist(), limit=8, mode="off").points
            assert {p.id: p.version for p in plain}.items() >= {p.id: p.version for p in responses[0].points
                                                                  if p.id in {q.id for q in plain}}.items()
    finally:
        client.close()


@pytest.mark.parametrize("using", [None, "text"])
def test_edge_reads_no_manifest_per_query_once_the_policy_is_known(tmp_path, monkeypatch, using):
    """A named vector's policy and model manifests were read from disk and validated on every query
    (0.1 ms of a 0.2 ms search on 5,183 keys): its view of the store had no manifest token."""
    import qdrant_edge as edge

    from amips_plugin import serving_policy as sp
    from amips_plugin import tuning
    from amips_plugin.adapters import edge_store
    from amips_plugin.adapters.vector_view import for_vector
    from amips_plugin.collection_ops import read_keys

    rng = np.random.default_rng(3)
    keys, queries = rng.standard_normal((800, 16)).astype(np.float32), rng.standard_normal((20, 16)).astype(np.float32)
    shard_dir = tmp_path / "docs" / "shard"
    shard_dir.mkdir(parents=True)
    params = edge.EdgeVectorParams(size=16, distance=edge.Distance.Dot)
    shard = edge.EdgeShard.create(str(shard_dir), edge.EdgeConfig(vectors=params if using is None else {using: params}))
    shard.update(edge.UpdateOperation.upsert_points(
        [edge.Point(i, v.tolist() if using is None else {using: v.tolist()}, {}) for i, v in enumerate(keys)]))
    shard.flush()
    shard.close()
    client = AmipsClient(f"edge:{tmp_path}")
    try:
        view = for_vector(client.store, using)
        tuning.publish_policy(view, "docs", sp.Policy("plain", 32), read_keys(view, "docs")[2], None)
        client.query_points("docs", query=queries[0], using=using, limit=5)
        reads, tokens = Counter(), Counter()
        real, real_token = edge_store.EdgeStore._read_manifest_file, edge_store.EdgeStore.manifest_token
        monkeypatch.setattr(edge_store.EdgeStore, "_read_manifest_file",
                            staticmethod(lambda *a: reads.update(["read"]) or real(*a)))
        monkeypatch.setattr(edge_store.EdgeStore, "manifest_token", lambda self, c, slot="model": tokens.update(
            [slot.split("@")[0]]) or real_token(self, c, slot))
        for query in queries:
            client.query_points("docs", query=query, using=using, limit=5)
        report = client.last_report
        assert report.fallback_reason is None and "plain search at hnsw_ef 32" in report.notes[0]
        assert reads["read"] == 0
        # one file stat a query, the policy's: a policy that reads no model does not watch the model's manifest
        assert tokens == {"policy": len(queries)}
    finally:
        client.close()


def _users_edge_shard(root, keys: np.ndarray) -> None:
    """Collection "docs" under `root`, made by qdrant-edge directly with its default configuration, as an
    application would: a named vector "text", UUID-free integer ids, empty payloads."""
    import qdrant_edge as edge

    shard_dir = root / "docs" / "shard"
    shard_dir.mkdir(parents=True)
    shard = edge.EdgeShard.create(str(shard_dir), edge.EdgeConfig(
        vectors={"text": edge.EdgeVectorParams(size=keys.shape[1], distance=edge.Distance.Dot)}))
    shard.update(edge.UpdateOperation.upsert_points([edge.Point(i, {"text": v.tolist()}, {}) for i, v in
                                                     enumerate(keys)]))
    shard.optimize()
    shard.flush()
    shard.close()


def test_tune_says_when_the_engine_scans_every_vector_and_does_not_tune_hnsw_ef(tmp_path):
    """A shard made with Qdrant's defaults holds no HNSW index below 10 MB of vectors (the first-hour trial's
    5,183 × 384 keys: every search scored every vector, so hnsw_ef changed nothing), yet tune stored "plain
    search at hnsw_ef 8" as if it had tuned it. It says why and stores plain search untuned; the same keys in
    a collection amips made (HNSW-indexed) are tuned."""
    from amips_plugin import collection_ops as ops
    from amips_plugin import tuning
    from amips_plugin.adapters import open_store

    rng = np.random.default_rng(8)
    keys = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = rng.standard_normal((2000, 32)).astype(np.float32)
    _users_edge_shard(tmp_path / "users", keys)
    users = open_store(f"edge:{tmp_path / 'users'}")
    ours = open_store(f"edge:{tmp_path / 'ours'}")
    try:
        assert "no HNSW index for 'docs' [text]: its 3,000 vectors" in users.exact_scan_reason("docs", "text")
        report = AmipsClient(users).tune("docs", queries, 0.95, using="text", progress=False)
        assert [row.name for row in report.rows] == [report.plain.name] and report.manifest["kind"] == "plain"
        assert "no HNSW index" in report.verdict() and "amips advise docs" in report.verdict()
        ops.ingest(ours, "docs", keys)
        assert ours.exact_scan_reason("docs") is None
        tuned = tuning.tune(ours, "docs", queries, 0.95, repeats=1)
        assert not tuned.notes and len({row.policy.first for row in tuned.rows}) > 1
    finally:
        users.close()
        ours.close()
