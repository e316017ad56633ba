"""Every artifact is bound to the points it was built on (issue 22.2, 22.3).

A collection's write stamp (a random id made with the collection, and a generation every amips write
bumps first) is recorded in each manifest; the model, the side indexes and the serving policy are fresh
only while the collection still has that stamp (amips_plugin/freshness.py). Before this, the query path
compared point counts and dimensions only: a collection re-created by hand on Edge inherited the old
`amips/` folder as fresh (`--candidates-from pq` recall 0.00), a pq.json copied into another collection
of the same size served there, and an `--upsert` racing the first `train` was published fresh.
"""
import shutil

import numpy as np
import pytest

from amips_plugin import collection_ops as ops
from amips_plugin import model_registry, serving_policy, training, tuning
from amips_plugin.adapters import SearchParams, open_store
from amips_plugin.core.manifest_schema import BlobManifestSchema
from amips_plugin import pq_build
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.synthetic import gaussian_mixture
from amips_plugin.train_config import TrainConfig

QUICK = TrainConfig(steps=10, eval_every=10, noise_copies=0, device="cpu", min_match=0.0)
N, DIM = 3000, 16


@pytest.fixture(scope="module")
def data():
    keys, queries = gaussian_mixture(num_keys=N, num_queries=900, dim=DIM, clusters=12, seed=21)
    other = gaussian_mixture(num_keys=N, num_queries=10, dim=DIM, clusters=12, seed=22)[0]
    return keys, other, queries[:600], queries[600:]


def _with_artifacts(store, name, keys, train_queries) -> None:
    """`name` with a model, a compressed key store and a plain serving policy, all fresh."""
    ops.ingest(store, name, keys)
    ops.train(store, name, train_queries, QUICK, progress=False)
    pq_build.build(store, name, subspaces=4)
    tuning.publish_policy(store, name, serving_policy.Policy("plain", 32), ops.read_keys(store, name)[2],
                          None)


def _fresh(store, name) -> dict:
    report = ops.status(store, name, verify=False)
    return {"model": bool(report["model"]) and not report["model"]["stale"],
            "pq": bool(report["side_indexes"].get("pq")) and not report["side_indexes"]["pq"]["stale"],
            "policy": bool(report["policy"]) and not report["policy"]["stale"]}


def _assert_plain(store, name, queries) -> None:
    """Every mode and candidate source answers like plain search, saying why."""
    rewriter, params = QueryRewriter(store), SearchParams(exact=True)
    plain = store.search(name, queries, 5, params)
    for mode, source in (("replace", "engine"), ("hybrid", "engine"), ("off", "pq"), ("auto", "engine")):
        result, report = rewriter.search(name, queries, 5, mode=mode, params=params, candidate_source=source)
        np.testing.assert_array_equal(result.ids[:, 0], plain.ids[:, 0], err_msg=f"{mode} / {source}")
        assert report.fallback_reason or report.notes, f"{mode} / {source} fell back silently"


def test_a_collection_recreated_by_hand_does_not_inherit_the_old_artifacts(tmp_path, data):
    keys, other, train_queries, test_queries = data
    store = open_store(f"edge:{tmp_path}")
    _with_artifacts(store, "c1", keys, train_queries)
    assert _fresh(store, "c1") == {"model": True, "pq": True, "policy": True}
    store.close()
    shutil.rmtree(tmp_path / "c1" / "shard")  # the user deletes the points, not amips/

    store = open_store(f"edge:{tmp_path}")
    assert ops.ingest(store, "c1", other).created
    assert _fresh(store, "c1") == {"model": False, "pq": False, "policy": False}
    assert not [p for p in (tmp_path / "c1" / "amips").iterdir() if p.name != ".manifest.lock"]
    _assert_plain(store, "c1", test_queries)
    store.close()


def test_a_shard_recreated_by_other_tools_leaves_the_old_artifacts_stale(tmp_path, data):
    """Not through amips (so nothing clears `amips/`): the new shard has no stamp, the artifacts name one."""
    import qdrant_edge as edge

    keys, other, train_queries, test_queries = data
    store = open_store(f"edge:{tmp_path}")
    _with_artifacts(store, "c1", keys, train_queries)
    config = store._shard_config("c1")  # the same configuration, as a user's script would give it
    store.close()
    shutil.rmtree(tmp_path / "c1" / "shard")
    shard = edge.EdgeShard.create(str(tmp_path / "c1" / "shard"), store._config(DIM, "dot", "none", ""))
    shard.update(edge.UpdateOperation.upsert_points([edge.Point(i, v) for i, v in enumerate(other.tolist())]))
    shard.optimize()
    shard.close()
    assert config["vectors"]

    store = open_store(f"edge:{tmp_path}")
    assert store.info("c1").count == N
    assert _fresh(store, "c1") == {"model": False, "pq": False, "policy": False}
    _assert_plain(store, "c1", test_queries)
    store.close()


@pytest.mark.parametrize("backend", ["edge", "local-dir"])
def test_artifacts_copied_into_another_collection_of_the_same_size_are_stale(tmp_path, data, backend):
    keys, other, train_queries, test_queries = data
    store = open_store(f"edge:{tmp_path}" if backend == "edge" else str(tmp_path / "local"))
    try:
        _with_artifacts(store, "c1", keys, train_queries)
        ops.ingest(store, "c2", other)
        for slot in ("model", "pq", "policy"):  # what an operator copying the files (or metadata) does
            manifest = store.read_manifest("c1", slot)
            if isinstance(manifest, BlobManifestSchema):
                store.write_blob("c2", manifest.blob, store.read_blob("c1", manifest.blob))
            store.write_manifest("c2", manifest.to_dict(), slot)
        assert _fresh(store, "c2") == {"model": False, "pq": False, "policy": False}
        _assert_plain(store, "c2", test_queries)
        assert _fresh(store, "c1") == {"model": True, "pq": True, "policy": True}  # the original is untouched
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["edge", "local-dir"])
def test_an_upsert_racing_the_first_train_is_published_stale(tmp_path, data, backend, monkeypatch):
    """The upsert overwrites existing points (the count does not change) while `train` fits, before any
    manifest exists for `mark_stale` to mark."""
    keys, other, train_queries, test_queries = data
    store = open_store(f"edge:{tmp_path}" if backend == "edge" else str(tmp_path / "local"))
    try:
        ops.ingest(store, "c", keys)
        real_fit = training.fit  # collection_ops.train imports it when it trains

        def fit_while_upserting(*args, **kwargs):
            ops.ingest(store, "c", other[:500], ids=np.arange(500), upsert=True)
            return real_fit(*args, **kwargs)

        monkeypatch.setattr(training, "fit", fit_while_upserting)
        trained = ops.train(store, "c", train_queries, QUICK, progress=False)
        assert trained.manifest["stale"]
        _, report = QueryRewriter(store).search("c", test_queries, 5, mode="replace")
        assert "stale" in report.fallback_reason

        monkeypatch.setattr(training, "fit", real_fit)  # trained again with nothing racing: fresh
        assert not ops.train(store, "c", train_queries, QUICK, progress=False).manifest["stale"]
        assert QueryRewriter(store).search("c", test_queries, 5, mode="replace")[1].fallback_reason is None

        store.upsert("c", np.arange(3), other[:3])  # any write through the store, even one bypassing ingest
        _, report = QueryRewriter(store).search("c", test_queries, 5, mode="replace")
        assert "stale" in report.fallback_reason
    finally:
        store.close()


def test_the_stamp_survives_reopening_and_an_unreadable_one_is_replaced(tmp_path, data):
    keys, _, train_queries, _ = data
    store = open_store(f"edge:{tmp_path}")
    ops.ingest(store, "c", keys[:200])
    ops.train(store, "c", train_queries, QUICK, progress=False)
    stamp = store.write_stamp("c")
    store.close()
    store = open_store(f"edge:{tmp_path}")
    assert store.write_stamp("c") == stamp and _fresh(store, "c")["model"]
    store.close()
    (tmp_path / "c" / "shard" / "amips-stamp.json").write_text('{"collection": "../../etc", "generation": -1}')
    store = open_store(f"edge:{tmp_path}")
    assert store.write_stamp("c") is None and not _fresh(store, "c")["model"]  # hostile: stale, never fresh
    assert model_registry.load(store, "c") is not None  # the model itself is intact; retraining binds it anew
    store.close()
