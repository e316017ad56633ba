"""Collections a user already has: made by plain qdrant-client / qdrant-edge, with gapped integer ids,
UUID ids and payloads. amips must serve them and never change a point it did not write."""
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as edge
from click.testing import CliRunner
from qdrant_client import QdrantClient, models

from amips_plugin.adapters import open_store
from amips_plugin import collection_ops
from amips_plugin.cli import main
from amips_plugin.core.errors import InputError
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.train_config import TrainConfig

pytestmark = pytest.mark.slow  # trains models and drives real stores; `pytest -m 'not slow'` skips it

BACKENDS = ["local-dir", "edge"] + (["server"] if os.environ.get("QDRANT_URL") else [])


def _make_user_collection(backend: str, root: Path, name: str, ids: list, keys: np.ndarray,
                          payloads: list[dict]) -> str:
    """Create `name` the way an application would, without amips; returns the amips store spec."""
    if backend in ("local-dir", "server"):
        client = (QdrantClient(path=str(root / "local")) if backend == "local-dir"
                  else QdrantClient(url=os.environ["QDRANT_URL"]))
        for stale in (name, f"{name}__amips"):  # a server outlives the test run: start clean
            if client.collection_exists(stale):
                client.delete_collection(stale)
        client.create_collection(name, vectors_config=models.VectorParams(size=keys.shape[1],
                                                                           distance=models.Distance.DOT))
        client.upsert(name, points=[models.PointStruct(id=i, vector=v.tolist(), payload=p)
                                    for i, v, p in zip(ids, keys, payloads)], wait=True)
        client.close()
        return str(root / "local") if backend == "local-dir" else os.environ["QDRANT_URL"]
    shard_dir = root / "edge" / name / "shard"
    shard_dir.mkdir(parents=True)
    shard = edge.EdgeShard.create(str(shard_dir), edge.EdgeConfig(
        vectors=edge.EdgeVectorParams(size=keys.shape[1], distance=edge.Distance.Dot)))
    shard.update(edge.UpdateOperation.upsert_points(
        [edge.Point(i, v.tolist(), p) for i, v, p in zip(ids, keys, payloads)]))
    shard.flush()
    shard.close()
    return f"edge:{root / 'edge'}"


def _write_as_another_client(store, name: str, point_id: int, vector: np.ndarray) -> None:
    """One point written through the engine's own client, which knows nothing of amips."""
    if store.location.startswith("edge:"):
        store._shard(name).update(edge.UpdateOperation.upsert_points([edge.Point(point_id, vector.tolist())]))
        store._forget_counts(name)  # this process's Edge store caches its count; a write by it would forget it
    else:
        store.client.upsert(name, points=[models.PointStruct(id=point_id, vector=vector.tolist())], wait=True)
        store._counts.clear()  # the store counts again within SPACES_TTL_SECONDS; the test skips the wait


def _points(store, name: str) -> dict:
    """Every point as {id: (vector, payload)}, read through the engine's own client."""
    if store.location.startswith("edge:"):
        records, offset = store._shard(name).scroll(edge.ScrollRequest(limit=100_000, with_vector=True,
                                                                       with_payload=True))
    else:
        records, offset = store.client.scroll(name, limit=100_000, with_vectors=True, with_payload=True)
    assert offset is None
    return {str(r.id): (np.round(np.asarray(r.vector, dtype=np.float32), 5).tolist(), r.payload) for r in records}


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_append_never_overwrites_points_of_a_collection_with_gapped_ids(backend, tmp_path, mixture):
    """Regression: appends used ids count..count+n−1, overwriting point 2071 (say) of a gapped collection."""
    keys = mixture[0][:40]
    ids = list(range(0, 80, 2))  # 40 points, ids with gaps, the largest 78
    payloads = [{"title": f"doc {i}"} for i in ids]
    spec = _make_user_collection(backend, tmp_path, "docs", ids, keys, payloads)
    store = open_store(spec)
    before = _points(store, "docs")
    extra = mixture[0][40:50]

    done = collection_ops.ingest(store, "docs", extra)

    after = _points(store, "docs")
    assert done.count == 50 and not done.created
    assert done.ids.tolist() == list(range(79, 89))  # the largest id + 1 onwards
    assert {k: after[k] for k in before} == before  # no existing vector or payload changed
    with pytest.raises(InputError, match="already exist"):
        collection_ops.ingest(store, "docs", extra[:3], ids=[4, 200, 6])
    assert _points(store, "docs") == after  # the refused append wrote nothing
    collection_ops.ingest(store, "docs", extra[:1], ids=[4], upsert=True, payloads=[{"title": "new"}])
    assert _points(store, "docs")["4"][1] == {"title": "new"}
    store.close()


def test_cli_append_reports_the_ids_it_wrote_and_refuses_collisions(backend, tmp_path, mixture):
    keys = mixture[0][:20]
    spec = _make_user_collection(backend, tmp_path, "docs", [3, 7, 1000] + list(range(10, 27)), keys,
                                 [{"n": i} for i in range(20)])
    np.save(tmp_path / "extra.npy", mixture[0][20:25])
    (tmp_path / "ids.txt").write_text("7\n2000\n2001\n2002\n2003\n")
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"k": i}) for i in range(5)))
    runner = CliRunner()
    ok = runner.invoke(main, ["--store", spec, "ingest", "docs", str(tmp_path / "extra.npy"), "--quiet",
                              "--payload", str(tmp_path / "p.jsonl")])
    assert ok.exit_code == 0, ok.output
    assert "ids 1001..1005" in ok.output and "25 in all" in ok.output
    refused = runner.invoke(main, ["--store", spec, "ingest", "docs", str(tmp_path / "extra.npy"), "--quiet",
                                   "--ids", str(tmp_path / "ids.txt")])
    assert refused.exit_code == 1 and "1 of these ids already exist" in refused.output and "7" in refused.output
    store = open_store(spec)
    points = _points(store, "docs")
    assert len(points) == 25 and points["7"][1] == {"n": 1} and points["1001"][1] == {"k": 0}
    store.close()


def test_uuid_collection_trains_searches_and_serves_side_indexes(backend, tmp_path, mixture):
    keys, train, test = mixture
    ids = [str(uuid.UUID(int=(7919 * i + 13) * 104729)) for i in range(len(keys))]
    spec = _make_user_collection(backend, tmp_path, "docs", ids, keys, [{"i": i} for i in range(len(keys))])
    store = open_store(spec)
    collection_ops.train(store, "docs", train, TrainConfig(steps=200, noise_copies=1, device="cpu"), progress=False)
    truth = np.array(ids)[(test @ keys.T).argmax(axis=1)]
    path = QueryRewriter(store)
    for mode in ("off", "replace", "hybrid"):
        result, report = path.search("docs", test, 5, mode)
        assert report.fallback_reason is None
        assert result.ids.dtype.kind == "U" and np.mean(result.ids[:, 0] == truth) > 0.95, mode
    report = collection_ops.status(store, "docs")
    assert report["model"]["stale"] is False

    from amips_plugin import route_build
    from amips_plugin.router_training import RouterTraining
    from amips_plugin import pq_build
    pq_build.build(store, "docs", subspaces=8)
    route_build.build(store, "docs", train, lists=6, training=RouterTraining(steps=50))
    for source in ("pq", "route"):
        result, report = path.search("docs", test, 5, "off", 10_000, candidate_source=source)
        assert not report.notes, report.notes
        assert np.mean(result.ids[:, 0] == truth) == 1.0, source  # every key a candidate: exact

    added = collection_ops.ingest(store, "docs", keys[:2] * 0.5)  # UUIDs only: integer ids start at 0
    assert added.ids.tolist() == [0, 1]
    result, report = path.search("docs", test, 5, "hybrid")
    assert "stale" in (report.fallback_reason or "")
    store.close()


def test_side_indexes_notice_points_added_by_other_clients(backend, tmp_path, mixture):
    """Another client's write cannot mark the side indexes stale; the changed point count must."""
    keys, train, test = mixture
    spec = _make_user_collection(backend, tmp_path, "docs", list(range(len(keys))), keys, [{}] * len(keys))
    store = open_store(spec)
    from amips_plugin import pq_build
    pq_build.build(store, "docs", subspaces=8)
    path = QueryRewriter(store)
    _, report = path.search("docs", test[:5], 3, "off", 50, candidate_source="pq")
    assert report.notes == []
    _write_as_another_client(store, "docs", 10_000, keys[0])  # no stale mark, no write stamp bumped
    result, report = path.search("docs", test[:5], 3, "off", 50, candidate_source="pq")
    assert any("built on 600 keys, the collection has 601" in note for note in report.notes)
    assert (result.ids[:, 0] >= 0).all()  # answered by the engine
    assert collection_ops.status(store, "docs", verify=False)["side_indexes"]["pq"]["stale"] is True
    store.close()


def test_store_spec_mistakes_are_caught(tmp_path, mixture, caplog):
    """An Edge folder opened without `edge:` is refused (it would be written into as local mode); a
    status of a store that does not exist creates nothing; a fallback is logged once, not per query."""
    runner = CliRunner()
    np.save(tmp_path / "keys.npy", mixture[0][:30])
    edge_dir = tmp_path / "edge"
    assert runner.invoke(main, ["--store", f"edge:{edge_dir}", "ingest", "c", str(tmp_path / "keys.npy"),
                                "--quiet"]).exit_code == 0
    wrong = runner.invoke(main, ["--store", str(edge_dir), "status"])
    assert wrong.exit_code == 1 and f"open it as 'edge:{edge_dir}'" in wrong.output
    bare = runner.invoke(main, ["--store", f"edge:{tmp_path / 'nothing'}", "status"])
    assert bare.exit_code == 0 and "no collections" in bare.output and not (tmp_path / "nothing").exists()
    sharded = runner.invoke(main, ["--store", f"edge:{edge_dir}", "ingest", "d", str(tmp_path / "keys.npy"),
                                   "--shards", "2"])
    assert sharded.exit_code == 1 and "apply to a Qdrant server" in sharded.output

    store = open_store(f"edge:{edge_dir}")
    path = QueryRewriter(store)
    with caplog.at_level("WARNING", logger="amips"):
        for row in range(5):
            path.search("c", mixture[2][row:row + 1], 3, "hybrid")
    assert [r.getMessage() for r in caplog.records].count(
        "amips: plain search for 'c': no model trained for this collection") == 1
    store.close()


def _two_vector_collection(backend: str, root: Path, keys: np.ndarray, other: np.ndarray) -> str:
    """A collection with two named cosine vectors ("text", "title") and a sparse one, UUID ids and
    payloads, made without amips."""
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(keys))]
    if backend in ("local-dir", "server"):
        client = (QdrantClient(path=str(root / "local")) if backend == "local-dir"
                  else QdrantClient(url=os.environ["QDRANT_URL"]))
        for stale in ("docs", "docs__amips"):
            if client.collection_exists(stale):
                client.delete_collection(stale)
        client.create_collection("docs", vectors_config={
            "text": models.VectorParams(size=keys.shape[1], distance=models.Distance.COSINE),
            "title": models.VectorParams(size=other.shape[1], distance=models.Distance.COSINE)},
            sparse_vectors_config={"bm25": models.SparseVectorParams()})
        client.upsert("docs", points=[models.PointStruct(id=i, vector={"text": k.tolist(), "title": o.tolist()},
                                                         payload={"n": n})
                                      for n, (i, k, o) in enumerate(zip(ids, keys, other))], wait=True)
        client.close()
        return str(root / "local") if backend == "local-dir" else os.environ["QDRANT_URL"]
    shard_dir = root / "edge" / "docs" / "shard"
    shard_dir.mkdir(parents=True)
    shard = edge.EdgeShard.create(str(shard_dir), edge.EdgeConfig(
        vectors={"text": edge.EdgeVectorParams(size=keys.shape[1], distance=edge.Distance.Cosine),
                 "title": edge.EdgeVectorParams(size=other.shape[1], distance=edge.Distance.Cosine)},
        sparse_vectors={"bm25": edge.EdgeSparseVectorParams()}))
    shard.update(edge.UpdateOperation.upsert_points(
        [edge.Point(i, {"text": k.tolist(), "title": o.tolist()}, {"n": n})
         for n, (i, k, o) in enumerate(zip(ids, keys, other))]))
    shard.flush()
    shard.close()
    return f"edge:{root / 'edge'}"


def test_named_vectors_each_get_their_own_model(backend, tmp_path, mixture):
    keys, train, test = mixture
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731 - cosine collections
    other = np.random.default_rng(0).standard_normal((len(keys), 8)).astype(np.float32)
    spec = _two_vector_collection(backend, tmp_path, keys, other)
    runner = CliRunner()
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "test.npy", test)
    ids = np.array([str(uuid.UUID(int=i + 1)) for i in range(len(keys))])
    np.save(tmp_path / "truth.npy", ids[(unit(test) @ unit(keys).T).argmax(axis=1)])

    no_vector = runner.invoke(main, ["--store", spec, "train", "docs", "--queries", str(tmp_path / "train.npy")])
    assert no_vector.exit_code == 1 and "several vectors (text, title)" in no_vector.output
    trained = runner.invoke(main, ["--store", spec, "train", "docs", "--using", "text", "--queries",
                                   str(tmp_path / "train.npy"), "--steps", "200", "--quiet"])
    assert trained.exit_code == 0, trained.output
    for mode in ("off", "hybrid"):
        found = runner.invoke(main, ["--store", spec, "search", "docs", "--using", "text", "--queries",
                                     str(tmp_path / "test.npy"), "--truth", str(tmp_path / "truth.npy"),
                                     "--mode", mode, "--exact", "--json"])
        assert found.exit_code == 0, found.output
        summary = json.loads(found.output.strip().splitlines()[-1])
        assert summary["recall@1"] == 1.0 and summary["fallback_reason"] is None, summary

    status = runner.invoke(main, ["--store", spec, "status", "--json"])
    reports = {r["vector"]: r for r in json.loads(status.output)}
    assert reports["text"]["model"]["stale"] is False and reports["title"]["model"] is None
    assert reports["bm25"]["unsupported"] == "a sparse vector"
    sparse = runner.invoke(main, ["--store", spec, "search", "docs", "--using", "bm25", "--queries",
                                  str(tmp_path / "test.npy")])
    assert sparse.exit_code == 1 and "cannot be served by amips: a sparse vector" in sparse.output

    store = open_store(spec)
    from amips_plugin.client import AmipsClient
    client = AmipsClient(store, mode="hybrid")
    hits = client.query_points("docs", query=test[0], using="text", limit=3,
                               search_params=models.SearchParams(exact=True))
    assert client.last_report.fallback_reason is None and hits.points[0].payload["n"] == int(
        np.flatnonzero(ids == np.load(tmp_path / "truth.npy")[0])[0])
    title = client.query_points("docs", query=other[5], using="title", limit=1,
                                search_params=models.SearchParams(exact=True))
    assert title.points[0].id == ids[5] and "no model" in client.last_report.fallback_reason

    # every mode with a filter and payloads on the named vector, against plain qdrant-style exact answers
    odd = models.Filter(must=[models.FieldCondition(key="n", match=models.MatchAny(any=list(range(1, 600, 2))))])
    allowed = np.arange(1, len(keys), 2)
    expected = [ids[allowed[np.argsort(-(unit(keys[allowed]) @ unit(q[None])[0]))[:3]]].tolist() for q in test[:20]]
    for mode in ("off", "replace", "hybrid"):
        got = client.query_batch_points("docs", [models.QueryRequest(
            query=q.tolist(), using="text", filter=odd, limit=3, with_payload=True,
            params=models.SearchParams(exact=True)) for q in test[:20]], mode=mode)
        found = [[p.id for p in r.points] for r in got]
        if mode == "replace":  # candidates from ŷ alone: approximate, but filtered and exactly scored
            assert np.mean([f[0] == e[0] for f, e in zip(found, expected)]) >= 0.8
        else:  # off is the exact search; hybrid's x prefetch contains it
            assert found == expected, mode
        assert all(p.payload["n"] % 2 == 1 for r in got for p in r.points)
    # side indexes of the named vector, then an append that stales them and the model, then a retrain
    client.build_index("docs", "pq", using="text", subspaces=8)
    client.build_index("docs", "route", queries=train, using="text", lists=6,
                       training=__import__("amips_plugin.router_training",
                                           fromlist=["RouterTraining"]).RouterTraining(steps=50))
    text = client.rewriter("text")
    for source in ("pq", "route"):
        result, report = text.search("docs", test, 5, "off", 10_000, candidate_source=source)
        assert not report.notes and np.mean(result.ids[:, 0] == np.load(tmp_path / "truth.npy")) == 1.0, source
    from amips_plugin.adapters.vector_view import for_vector
    collection_ops.ingest(for_vector(store, "text"), "docs", keys[:2], distance="cosine")
    result, report = text.search("docs", test[:5], 3, "hybrid")
    assert "stale" in report.fallback_reason
    assert "stale" in text.search("docs", test[:5], 3, "off", 50, candidate_source="pq")[1].notes[0]
    retrained = client.train("docs", train, TrainConfig(steps=100, noise_copies=0, device="cpu"), using="text")
    assert retrained["stale"] is False and retrained["version"] == 2
    assert text.search("docs", test[:5], 3, "hybrid")[1].fallback_reason is None
    client.close()


def test_oversampling_on_a_collection_without_int8_copies_is_refused(backend, tmp_path, mixture):
    """--oversampling only means something for a scalar-quantized collection; elsewhere it was ignored.
    (Local mode keeps no quantization and searches exactly, as a server may: there it stays accepted.)"""
    from amips_plugin.adapters import SearchParams

    if backend == "local-dir":
        pytest.skip("qdrant-client's local mode keeps no quantization config")
    keys, _, test = mixture
    spec = _make_user_collection(backend, tmp_path, "docs", list(range(len(keys))), keys, [{}] * len(keys))
    store = open_store(spec)
    with pytest.raises(InputError, match="oversampling applies to a scalar-quantized collection"):
        QueryRewriter(store).search("docs", test[:3], 3, "off", params=SearchParams(oversampling=2.0))
    quantized = f"sq_{uuid.uuid4().hex[:8]}"  # unique: a server outlives the test run
    collection_ops.ingest(store, quantized, keys, quantization="int8")
    result, _ = QueryRewriter(store).search(quantized, test[:3], 3, "off", params=SearchParams(oversampling=2.0))
    assert (result.ids[:, 0] >= 0).all()
    store.close()


def test_versions_keep_rising_after_a_drop(backend, tmp_path, mixture):
    """A model published after `drop-model` is version 2, not version 1 again."""
    keys, train, _ = mixture
    spec = _make_user_collection(backend, tmp_path, "docs", list(range(len(keys))), keys, [{}] * len(keys))
    runner = CliRunner()
    np.save(tmp_path / "keys.npy", keys)
    np.save(tmp_path / "train.npy", train[:600])
    fitted = runner.invoke(main, ["fit", str(tmp_path / "keys.npy"), str(tmp_path / "train.npy"), "-o",
                                  str(tmp_path / "m.amips"), "--steps", "50", "--quiet", "--device", "cpu"])
    assert fitted.exit_code == 0, fitted.output
    for expected in ("version 1", "version 2"):
        imported = runner.invoke(main, ["--store", spec, "import", "docs", str(tmp_path / "m.amips")])
        assert imported.exit_code == 0 and f"imported as model {expected}" in imported.output, imported.output
        assert runner.invoke(main, ["--store", spec, "drop-model", "docs"]).exit_code == 0
