"""Stored state is untrusted input: hostile manifests, blobs, sidecar chunks and names, on qdrant-client local
mode and Qdrant Edge. Whatever is planted, search answers every query (plain results, with the reason),
`status` lists every collection (saying what is wrong per slot), and drop / train recover the collection."""
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qdrant_client import models

from amips_plugin.adapters import SearchParams, open_store
from amips_plugin import collection_ops
from amips_plugin import model_registry
from amips_plugin.cli import main
from amips_plugin.core.errors import ArtifactError, InputError, StoreError
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.router_training import RouterTraining
from amips_plugin.synthetic import gaussian_mixture
from amips_plugin.train_config import TrainConfig
from amips_plugin import pq_store
from amips_plugin import pq_build, route_build, router_store

pytestmark = pytest.mark.slow  # trains models and drives real stores; `pytest -m 'not slow'` skips it

EXACT = SearchParams(exact=True)
QUICK = TrainConfig(steps=40, eval_every=20, noise_copies=0, device="cpu", min_match=0.0)
BACKENDS = ("local-dir", "edge")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


def _spec(backend: str, folder: Path) -> str:
    return f"edge:{folder}" if backend == "edge" else str(folder)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Per backend a closed store holding "c" (300 keys, 16-d; model, pq and router) and "d" (a plain
    collection beside it); built once, each test works on a copy."""
    keys, queries = gaussian_mixture(num_keys=300, num_queries=700, dim=16, clusters=8, seed=13)
    folder = tmp_path_factory.mktemp("hostile")
    np.save(folder / "test.npy", queries[600:])
    blob = None
    for backend in ("edge", "local-dir"):
        store = open_store(_spec(backend, folder / backend))
        collection_ops.ingest(store, "c", keys)
        collection_ops.ingest(store, "d", keys[:20])
        if blob is None:
            collection_ops.train(store, "c", queries[:600], QUICK, progress=False)
            blob = model_registry.read_blob(store, "c")
        else:
            model_registry.publish(store, "c", blob, model_registry.current_fingerprint(store, "c"))
        pq_build.build(store, "c", subspaces=4)
        route_build.build(store, "c", queries[:600], lists=4, sublists=2, coarse_candidates=4,
                           training=RouterTraining(steps=20))
        store.close()
    return folder, queries[600:]


@pytest.fixture(params=BACKENDS)
def hostile(request, template, tmp_path):
    """(spec, store opened on a fresh copy, test queries); the store is closed afterwards."""
    folder, test = template
    shutil.copytree(folder / request.param, tmp_path / "store")
    spec = _spec(request.param, tmp_path / "store")
    store = open_store(spec)
    yield spec, store, test
    store.close()


def _plant(store, slot: str, manifest) -> None:
    """Write anything as the slot's manifest, bypassing every check (as another client could)."""
    if store.location.startswith("edge:"):
        path = store._model_dir("c") / {"model": "manifest.json", "pq": "pq.json", "router": "router.json"}[slot]
        path.write_bytes(manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode())
    else:
        key = {"model": "amips", "pq": "amips_pq", "router": "amips_router"}[slot]
        store.client.update_collection("c", metadata={key: manifest})
        store._described.clear()  # the store re-reads the metadata within SPACES_TTL_SECONDS; the test skips the wait


def _plain(store, queries, limit=5):
    return QueryRewriter(store).search("c", queries, limit, "off", params=EXACT)[0]


def _amips(spec, *args):
    return CliRunner().invoke(main, ["--store", spec, *map(str, args)])


def _hostile_manifests(good: dict, slot: str) -> list:
    deep = {"a": None}
    for _ in range(60):
        deep = {"a": deep}
    common = [
        "a string", 12345, [], [good], {"version": "1"}, {**good, "version": True},
        {**good, "blob": 2 ** 70}, {**good, "blob": -1}, {**good, "sha256": "x" * 64}, {**good, "bytes": 10 ** 30},
        {**good, "fingerprint": "all of them"}, {**good, "stale": "no"}, {**good, "nested": deep, "version": deep},
        {**good, "slot": "elsewhere"},
    ]
    if slot == "model":
        return common + [{**good, "model": "smoothmax"}, {**good, "model": {**good["model"], "dim": 2 ** 40}},
                         {**good, "metrics": {"m": "high"}}, {**good, "dtype": "fp64"}]
    if slot == "pq":
        return common + [{**good, "subspaces": "4"}, {**good, "subspaces": 0},
                         {**good, "score_threshold": float("inf")}]
    return common + [{**good, "lists": 2 ** 70}, {**good, "coarse_candidates": None}, {**good, "sublists": 1.5}]


def _unloadable_manifests(good: dict, slot: str) -> list:
    """Schema-valid manifests that do not describe their blob: the load fails, status shows them."""
    wrong = [{**good, "bytes": good["bytes"] + 1}, {**good, "sha256": "0" * 64}]
    if slot == "model":
        wrong.append({**good, "model": {"kind": "keynet", "dim": 16, "width": 1 << 16, "depth": 64}})
    return wrong


# -- manifests ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("slot", ["model", "pq", "router"])
def test_hostile_manifests_mean_plain_search_status_says_why_and_drop_clears_them(hostile, slot):
    spec, store, test = hostile
    plain = _plain(store, test)
    good = store.read_manifest("c", slot).to_dict()
    source = {"model": "engine", "pq": "pq", "router": "route"}[slot]
    unloadable = _unloadable_manifests(good, slot)
    for manifest in _hostile_manifests(good, slot) + unloadable:
        _plant(store, slot, manifest)
        rewriter = QueryRewriter(store)
        mode = "hybrid" if slot == "model" else "off"
        result, report = rewriter.search("c", test, 5, mode, params=EXACT, candidate_source=source)
        if slot == "model":
            assert report.fallback_reason and report.rewritten == 0
        else:
            assert report.notes and "cannot be loaded" in report.notes[0]
        np.testing.assert_array_equal(result.ids, plain.ids)
        status = collection_ops.status(store, "c")
        entry = status["model"] if slot == "model" else status["side_indexes"][slot]
        if manifest in unloadable:
            assert entry["version"] == good["version"]
            continue
        fix = "drop-model" if slot == "model" else "drop-index c " + ("route" if slot == "router" else "pq")
        assert fix in entry["error"], (manifest, entry)
    others = [s for s in ("model", "pq", "router") if s != slot]
    kept = {s: store.read_manifest("c", s) for s in others}
    assert model_registry.drop(store, "c", slot)
    assert store.read_manifest("c", slot) is None
    assert {s: store.read_manifest("c", s) for s in others} == kept  # the other slots untouched
    for s in others:  # and their blobs still load
        model_registry.read_verified_blob(store, "c", kept[s])


def test_edge_manifest_files_that_are_not_json_or_not_files(hostile):
    spec, store, test = hostile
    if not spec.startswith("edge:"):
        pytest.skip("Edge manifest files")
    plain = _plain(store, test)
    path = store._model_dir("c") / "manifest.json"
    for text in (b"{", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b'{"version": ' + b"9" * 5000 + b"}",
                 b" " * (2 << 20)):
        path.write_bytes(text)
        result, report = QueryRewriter(store).search("c", test, 5, params=EXACT)
        assert "drop-model" in report.fallback_reason
        np.testing.assert_array_equal(result.ids, plain.ids)
    path.unlink()
    path.mkdir()  # a directory where the file should be
    _, report = QueryRewriter(store).search("c", test, 5, params=EXACT)
    assert "not a regular file" in report.fallback_reason
    path.rmdir()


def test_status_lists_every_collection_and_drop_and_train_recover_through_the_cli(hostile):
    spec, store, test = hostile
    _plant(store, "model", {"version": "one"})
    _plant(store, "pq", "nonsense")
    store.close()
    listed = _amips(spec, "status", "--no-verify")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["c", "d"]
    assert "model UNUSABLE" in lines[0] and "drop-model c" in lines[0] and "drop-index c pq" in lines[0]
    queries = Path(spec.removeprefix("edge:")).parent / "queries.npy"
    np.save(queries, test)
    searched = _amips(spec, "search", "c", "--queries", queries, "--json", "--candidates-from", "pq",
                      "--mode", "hybrid")
    assert searched.exit_code == 0, searched.output
    summary = json.loads(searched.output.splitlines()[-1])
    assert "drop-model c" in summary["fallback_reason"] and "drop-index c pq" in summary["notes"][0]
    exported = _amips(spec, "export", "c", "-o", queries.parent / "m.amips")
    assert exported.exit_code == 1 and exported.output.count("\n") == 1 and "drop-model c" in exported.output
    too_many = _amips(spec, "search", "c", "--queries", queries, "--limit", "10001")
    assert too_many.exit_code == 2 and "10001 is not in the range 1<=x<=10000" in too_many.output
    assert _amips(spec, "drop-index", "c", "pq").exit_code == 0
    assert _amips(spec, "drop-model", "c").exit_code == 0
    after = _amips(spec, "status", "c", "--json", "--no-verify")
    report = json.loads(after.output)
    assert (report["model"] is None and "pq" not in report["side_indexes"]
            and not report["side_indexes"]["router"].get("error"))


def test_train_and_ingest_work_over_a_broken_manifest(hostile):
    spec, store, test = hostile
    for slot in ("model", "pq", "router"):
        _plant(store, slot, {"version": [1]})
    collection_ops.ingest(store, "c", np.ones((2, 16), dtype=np.float32))  # marks what it can stale
    keys, queries = gaussian_mixture(num_keys=80, num_queries=300, dim=16, clusters=8, seed=13)
    trained = collection_ops.train(store, "c", queries, QUICK, progress=False)
    assert trained.manifest["version"] == 1 and store.read_manifest("c").to_dict() == trained.manifest
    _, report = QueryRewriter(store).search("c", test, 5, params=EXACT)
    assert report.fallback_reason is None and report.rewritten == len(test)


def test_fuzzed_manifests_never_break_search_or_status(hostile):
    spec, store, test = hostile
    good = store.read_manifest("c").to_dict()
    plain = _plain(store, test[:8])
    leaf = st.none() | st.booleans() | st.integers(-2 ** 80, 2 ** 80) | st.floats(allow_nan=False) | st.text(max_size=5)
    value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                            max_size=3), max_leaves=6)

    @FUZZ
    @given(st.sampled_from(sorted(good) + ["model.dim", "model.kind", "model.width", "fingerprint.count"]), value)
    def check(field, replacement):
        manifest = json.loads(json.dumps(good))
        if "." in field:
            outer, inner = field.split(".")
            manifest[outer][inner] = replacement
        else:
            manifest[field] = replacement
        _plant(store, "model", manifest)
        result, report = QueryRewriter(store).search("c", test[:8], 5, "replace", candidates=20, params=EXACT)
        if report.fallback_reason:
            np.testing.assert_array_equal(result.ids, plain.ids)
        collection_ops.status(store, "c", verify=False)

    check()


# -- blobs ------------------------------------------------------------------------------------------------------

def _publish_raw(store, blob: bytes) -> dict:
    """A checksum-valid manifest naming `blob`, written without any check (fields from the current one)."""
    import hashlib

    blob_id = 12345
    store.write_blob("c", blob_id, blob)
    manifest = {**store.read_manifest("c").to_dict(), "blob": blob_id, "sha256": hashlib.sha256(blob).hexdigest(),
                "bytes": len(blob)}
    store.write_manifest("c", manifest)
    return manifest


def test_a_planted_hostile_blob_costs_one_read_not_one_per_query(hostile, monkeypatch):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_hostile_files import huge_model_artifact

    spec, store, test = hostile
    plain = _plain(store, test)
    _publish_raw(store, huge_model_artifact())
    reads = []
    original = store.read_blob
    monkeypatch.setattr(store, "read_blob", lambda *a: reads.append(a) or original(*a))
    rewriter = QueryRewriter(store)
    started = time.perf_counter()
    for _ in range(5):
        result, report = rewriter.search("c", test, 5, params=EXACT)
        assert "declared architecture" in report.fallback_reason
        np.testing.assert_array_equal(result.ids, plain.ids)
    assert time.perf_counter() - started < 10
    assert len(reads) == 1  # load() reads it once, retries only when the manifest changed meanwhile


def test_a_stale_model_is_never_read_by_the_query_path(hostile, monkeypatch):
    spec, store, test = hostile
    model_registry.mark_stale(store, "c")
    reads = []
    original = store.read_blob
    monkeypatch.setattr(store, "read_blob", lambda *a: reads.append(a) or original(*a))
    rewriter = QueryRewriter(store)
    for _ in range(3):
        _, report = rewriter.search("c", test, 5, params=EXACT)
        assert "stale" in report.fallback_reason
    assert reads == []


def test_blob_reads_are_bounded_by_the_manifest(hostile):
    spec, store, test = hostile
    manifest = store.read_manifest("c")
    with pytest.raises(ArtifactError):
        store.read_blob("c", manifest.blob, manifest.bytes // 4 - 1)  # Edge: stat; local: chunk count
    if spec.startswith("edge:"):
        with pytest.raises(ArtifactError, match="under|over|limit"):
            store.read_blob("c", manifest.blob, 10)


def test_malformed_sidecar_chunks_mean_plain_search(hostile):
    spec, store, test = hostile
    if spec.startswith("edge:"):
        pytest.skip("sidecar chunks are qdrant-client's")
    plain = _plain(store, test)
    manifest = store.read_manifest("c")
    chunk_id = manifest.blob << 20
    good = store.client.retrieve("c__amips", [chunk_id], with_payload=True)[0].payload
    for payload in ({**good, "total": "1"}, {**good, "total": 0}, {**good, "total": 10 ** 9}, {**good, "total": -3},
                    {**good, "data": "!!not base64!!"}, {**good, "data": "QUJD!!"}, {**good, "data": 7},
                    {**good, "index": 5}, {"total": 1}):
        store.client.upsert("c__amips", points=[models.PointStruct(id=chunk_id, vector={}, payload=payload)], wait=True)
        with pytest.raises(ArtifactError, match="malformed|incomplete"):
            store.read_blob("c", manifest.blob)
        result, report = QueryRewriter(store).search("c", test, 5, params=EXACT)
        assert report.fallback_reason and "cannot be loaded" in report.fallback_reason
        np.testing.assert_array_equal(result.ids, plain.ids)


# -- drops touch only their own slot ---------------------------------------------------------------------------

def test_a_model_manifest_naming_the_pq_blob_cannot_get_it_deleted(hostile):
    spec, store, test = hostile
    pq = store.read_manifest("c", "pq")
    _plant(store, "model", {**store.read_manifest("c").to_dict(), "blob": pq.blob, "sha256": pq.sha256,
                            "bytes": pq.bytes})
    assert model_registry.drop(store, "c")
    assert model_registry.read_verified_blob(store, "c", pq)  # still there
    _, report = QueryRewriter(store).search("c", test, 5, "off", params=EXACT, candidate_source="pq")
    assert report.notes == []


def test_a_side_index_naming_deleted_points_falls_back_to_engine_candidates(hostile):
    spec, store, test = hostile
    # by another client (which cannot bump amips's write stamp): four points deleted, four others in their
    # place, so the point count still matches the one the indexes were built on
    moved = store.retrieve("c", np.arange(4, 8)).tolist()
    if spec.startswith("edge:"):
        import qdrant_edge as edge

        store._shard("c").update(edge.UpdateOperation.delete_points([0, 1, 2, 3]))
        store._shard("c").update(edge.UpdateOperation.upsert_points(
            [edge.Point(10_000 + i, v) for i, v in enumerate(moved)]))
    else:
        store.client.delete("c", points_selector=models.PointIdsList(points=[0, 1, 2, 3]), wait=True)
        store.client.upsert("c", points=models.Batch(ids=list(range(10_000, 10_004)), vectors=moved), wait=True)
    plain = _plain(store, test)
    for source in ("pq", "route"):
        rewriter = QueryRewriter(store)
        for _ in range(2):  # the second search remembers it
            result, report = rewriter.search("c", test, 5, "off", candidates=300, params=EXACT, candidate_source=source)
            assert report.notes and "no longer has" in report.notes[0]
            np.testing.assert_array_equal(result.ids, plain.ids)


# -- names and the sidecar -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [".", "..", "c\n", "c\t", "tab\x00", "c__amips", "a/b", ""])
def test_unsafe_collection_names_are_refused(hostile, name):
    spec, store, test = hostile
    with pytest.raises(InputError, match="invalid collection name"):
        collection_ops.ingest(store, name, np.ones((2, 16), dtype=np.float32))
    assert sorted(store.collections()) == ["c", "d"]
    if spec.startswith("edge:"):
        root = Path(spec.removeprefix("edge:"))
        assert sorted(p.name for p in root.parent.iterdir()) == ["store"]  # nothing written beside the store


def test_a_foreign_collection_with_the_sidecar_name_is_never_written(tmp_path):
    store = open_store(str(tmp_path / "local"))
    keys = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    collection_ops.ingest(store, "foo", keys)
    store.client.create_collection("foo__amips",
                                   vectors_config=models.VectorParams(size=8, distance=models.Distance.DOT))
    store.client.upsert("foo__amips", points=[models.PointStruct(id=1, vector=[1.0] * 8, payload={"mine": True})],
                        wait=True)
    with pytest.raises(StoreError, match="not amips's sidecar"):
        model_registry.publish_blob(store, "foo", b"x" * 10, {})
    with pytest.raises(StoreError, match="not amips's sidecar"):
        model_registry.drop(store, "foo") or store.delete_blob("foo", None)
    assert store.client.count("foo__amips").count == 1
    assert store.client.retrieve("foo__amips", [1], with_payload=True)[0].payload == {"mine": True}
    store.close()


def test_a_sidecar_from_before_the_marker_is_adopted(tmp_path):
    store = open_store(str(tmp_path / "local"))
    collection_ops.ingest(store, "foo", np.ones((3, 8), dtype=np.float32))
    store.client.create_collection("foo__amips", vectors_config={})  # as earlier amips created it
    manifest = model_registry.publish_blob(store, "foo", b"payload", {"fingerprint": None, "subspaces": 1}, slot="pq")
    assert store.read_blob("foo", manifest["blob"]) == b"payload"
    assert store.client.get_collection("foo__amips").config.metadata == {"amips_sidecar_of": "foo"}
    store.close()


# -- caller inputs -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(limit=10_001), dict(limit=0), dict(limit=True), dict(candidates=-1),
                                    dict(candidates=0), dict(candidates=10 ** 9),
                                    dict(params=SearchParams(hnsw_ef=-1)), dict(params=SearchParams(hnsw_ef=0)),
                                    dict(params=SearchParams(hnsw_ef=10 ** 12)),
                                    dict(params=SearchParams(oversampling=0.5)),
                                    dict(params=SearchParams(oversampling=float("nan"))),
                                    dict(params=SearchParams(oversampling=float("inf")))])
def test_search_knobs_out_of_range_are_input_errors(hostile, kwargs):
    spec, store, test = hostile
    arguments = {"limit": 5, **kwargs}
    with pytest.raises(InputError, match="must be"):
        QueryRewriter(store).search("c", test[:2], arguments.pop("limit"), **arguments)


def test_queries_whose_norm_float32_cannot_square_are_refused_and_no_nan_reaches_the_store(hostile, monkeypatch):
    spec, store, test = hostile
    huge = test[:3] * np.float32(1e30)
    assert np.isfinite(huge).all()
    with pytest.raises(InputError, match="norm above"):
        QueryRewriter(store).search("c", huge, 5, params=EXACT)
    sent = []
    original = store.search_prefetched
    monkeypatch.setattr(store, "search_prefetched",
                        lambda c, q, probes, *a: sent.append(probes) or original(c, q, probes, *a))
    rewriter = QueryRewriter(store)
    model, _, _ = rewriter.model_for("c", 16)

    def nan_rewrites(x):
        return x * float("nan"), torch.ones(len(x), dtype=torch.bool)

    monkeypatch.setattr(model, "predict_with_confidence", nan_rewrites)
    result, report = rewriter.search("c", test, 5, params=EXACT)
    assert report.rewritten == 0 and report.plain == len(test) and "not finite" in report.notes[0]
    assert all(np.isfinite(p).all() for probes in sent for p in probes)
    np.testing.assert_array_equal(result.ids, _plain(store, test).ids)


def test_url_credentials_and_api_keys_never_appear_in_errors():
    from amips_plugin.adapters.qdrant_client_store import QdrantClientStore

    with pytest.raises(StoreError) as info:
        QdrantClientStore("http://alice:hunter2@127.0.0.1:9", api_key="sk-secret-key", attempts=1)
    assert "hunter2" not in str(info.value) and "sk-secret-key" not in str(info.value) and "***@" in str(info.value)
    out = CliRunner().invoke(main, ["--store", "http://alice:hunter2@127.0.0.1:9", "--api-key", "sk-secret-key",
                                    "status"])
    assert out.exit_code == 1 and "hunter2" not in out.output and "sk-secret-key" not in out.output


def test_a_store_never_shows_its_url_credentials(monkeypatch):
    """Every message a store writes names it by `location` (unknown collection, server failures)."""
    from amips_plugin.adapters.qdrant_client_store import QdrantClientStore

    monkeypatch.setattr(QdrantClientStore, "_wait_for_server", lambda self, attempts, backoff: None)
    store = QdrantClientStore("https://alice:hunter2@db.example:6333")
    assert store.location == "https://***@db.example:6333"
    store.close()


def test_checksum_valid_side_indexes_that_do_not_fit_the_collection_mean_engine_candidates(hostile):
    """A compressed key store of another dimension, or naming negative point ids, is published like a
    real one (valid container, valid manifest); searches note it and use the engine."""
    from amips_plugin.compression.anisotropic_pq import ProductCodes

    spec, store, test = hostile
    plain = _plain(store, test)
    rng = np.random.default_rng(0)
    fields = {"subspaces": 2, "fingerprint": store.read_manifest("c", "pq").fingerprint.to_dict()}
    for dim, ids, expected in ((8, np.arange(300), "expects dimension 8"),
                               (16, -np.arange(1, 301), "negative point ids")):
        codes = ProductCodes(rng.normal(size=(2, 256, dim // 2)).astype(np.float32),
                             rng.integers(0, 256, size=(300, 2)).astype(np.uint8))
        blob = pq_store.encode_key_store(pq_store.KeyStore(codes, ids.astype(np.int64)), fields)
        model_registry.publish_blob(store, "c", blob, fields, slot="pq")
        result, report = QueryRewriter(store).search("c", test, 5, "off", candidates=50, params=EXACT,
                                                     candidate_source="pq")
        assert expected in report.notes[0]
        np.testing.assert_array_equal(result.ids, plain.ids)


# -- large but consistent state (issue 22.13) -------------------------------------------------------------------

def test_a_model_larger_than_its_keys_warrant_means_plain_search_and_its_blob_is_never_read(hostile, monkeypatch):
    """A checksum-valid SmoothMax model of 300,000 points × rank 16 (4.8M parameters, over 4·N·d + 2²² = 4.2M for 300
    keys of dimension 16), published for the collection it was "trained" on: refused before its blob is read."""
    from amips_plugin.model_artifact import encode_model
    from amips_plugin.models import ModelConfig, build_model

    spec, store, test = hostile
    plain = _plain(store, test)
    huge = build_model(ModelConfig(kind="smoothmax", dim=16, width=16, points=300_000))
    model_registry.publish(store, "c", encode_model(huge, dtype="int8"), model_registry.current_fingerprint(store, "c"))
    reads = []
    original = store.read_blob
    monkeypatch.setattr(store, "read_blob", lambda *a: reads.append(a) or original(*a))
    result, report = QueryRewriter(store).search("c", test, 5, params=EXACT)
    assert "4,800,275 parameters, over the 4,213,504 allowed for 300 keys" in report.fallback_reason
    np.testing.assert_array_equal(result.ids, plain.ids)
    assert reads == []


def _tiled_key_store(store, times: int) -> bytes:
    """The collection's real compressed key store repeated `times` times: valid codes, every id in the collection."""
    real, manifest = pq_store.load(store, "c")
    codes = pq_store.ProductCodes(real.codes.codebooks, np.tile(real.codes.codes, (times, 1)))
    return pq_store.encode_key_store(pq_store.KeyStore(codes, np.tile(real.ids, times)),
                                     {"fingerprint": manifest.fingerprint.to_dict()})


def _tiled_routed_lists(store, times: int) -> bytes:
    real, manifest = router_store.load(store, "c")
    assignment = np.repeat(np.arange(len(real.bounds) - 1), np.diff(real.bounds))
    tiled = router_store.RoutedLists.from_assignment(real.ranker, np.tile(real.ids, times),
                                                     np.tile(assignment, times), real.coarse_candidates)
    return router_store.encode_routed_lists(tiled, {"fingerprint": manifest.fingerprint.to_dict()})


def _build_fields(store, slot: str) -> dict:
    """The slot's current manifest without what publishing sets: the fields a build of it publishes."""
    published = ("version", "blob", "sha256", "bytes", "slot", "created", "stale", "bound_to")
    return {k: v for k, v in store.read_manifest("c", slot).to_dict().items() if k not in published}


@pytest.mark.parametrize("source, slot, tiled", [("pq", "pq", _tiled_key_store),
                                                 ("route", "router", _tiled_routed_lists)])
def test_side_indexes_naming_more_ids_than_their_keys_mean_engine_candidates(hostile, source, slot, tiled):
    """The real index tiled 10× (3,000 ids, all in the collection), or with one id twice: published like a real
    one under the manifest's fingerprint (300 keys), it is refused at load; searches note why."""
    spec, store, test = hostile
    plain = _plain(store, test)
    fields = _build_fields(store, slot)
    model_registry.publish_blob(store, "c", tiled(store, 10), fields, slot=slot)
    result, report = QueryRewriter(store).search("c", test, 5, "off", candidates=2, params=EXACT,
                                                 candidate_source=source)
    assert "holds 3,000 point ids, its manifest says it was built on 300 keys" in report.notes[0]
    np.testing.assert_array_equal(result.ids, plain.ids)


def test_a_key_store_naming_a_point_twice_means_engine_candidates(hostile):
    spec, store, test = hostile
    real, _ = pq_store.load(store, "c")
    fields = _build_fields(store, "pq")
    twice = pq_store.KeyStore(real.codes, np.concatenate([real.ids[:-1], real.ids[:1]]))
    model_registry.publish_blob(store, "c", pq_store.encode_key_store(twice, fields), fields, slot="pq")
    _, report = QueryRewriter(store).search("c", test, 5, "off", candidates=2, params=EXACT, candidate_source="pq")
    assert "names the same point id more than once" in report.notes[0]


def test_the_query_path_runs_the_model_in_bounded_row_chunks(hostile, monkeypatch):
    """300 queries reach the model in passes of at most inference.SERVING_ROWS rows, not in one pass."""
    from amips_plugin.inference import SERVING_ROWS

    spec, store, test = hostile
    rewriter = QueryRewriter(store)
    queries = np.tile(test, (3, 1))
    model, _, reason = rewriter.model_for("c", 16, 300)
    assert reason is None
    seen = []
    original = model.predict_with_confidence
    monkeypatch.setattr(model, "predict_with_confidence", lambda x: seen.append(len(x)) or original(x))
    _, report = rewriter.search("c", queries, 5, params=EXACT)
    assert report.rewritten == len(queries) and sum(seen) == len(queries)
    assert max(seen) <= SERVING_ROWS < len(queries)
