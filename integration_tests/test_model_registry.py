"""Publishing models alongside collections, and the query path's fallbacks, on real backends."""
import logging

import numpy as np
import pytest
import torch

from amips_plugin.adapters import SearchParams, open_store
from amips_plugin import model_registry
from amips_plugin.core.errors import ArtifactError, InputError
from amips_plugin.models import ModelConfig, build_model
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.model_artifact import encode_model


def _blob(dim: int = 8, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return encode_model(build_model(ModelConfig(kind="keynet", dim=dim, width=4, depth=1)))


@pytest.fixture(params=[":memory:", "edge"])
def store(request, tmp_path):
    store = open_store(request.param if request.param != "edge" else f"edge:{tmp_path / 'edge'}")
    store.create("c", 8, "dot")
    rng = np.random.default_rng(0)
    store.upsert("c", np.arange(200), rng.normal(size=(200, 8)).astype(np.float32))
    store.finish_bulk_load("c")
    yield store
    store.close()


def test_publish_bumps_versions_and_removes_the_replaced_blob(store):
    first = model_registry.publish(store, "c", _blob(seed=1), {"count": 200})
    second = model_registry.publish(store, "c", _blob(seed=2), {"count": 200})
    assert (first["version"], second["version"]) == (1, 2) and first["blob"] != second["blob"]
    assert model_registry.load(store, "c").manifest.sha256 == second["sha256"]
    with pytest.raises(ArtifactError):
        store.read_blob("c", first["blob"])


def test_a_concurrent_publish_wins_and_the_late_writer_backs_off(store):
    model_registry.publish(store, "c", _blob(seed=1), {"count": 200})
    original_write_blob = store.write_blob

    def racing_write_blob(collection, blob_id, data):  # another trainer commits while we write
        store.write_blob = original_write_blob
        model_registry.publish(store, collection, _blob(seed=3), {"count": 200})
        original_write_blob(collection, blob_id, data)

    store.write_blob = racing_write_blob
    with pytest.raises(model_registry.ConcurrentPublishError):
        model_registry.publish(store, "c", _blob(seed=2), {"count": 200})
    survivor = model_registry.load(store, "c")
    assert survivor.manifest.version == 2  # the racer's model, intact and loadable
    assert survivor.manifest.sha256 == model_registry.hashlib.sha256(_blob(seed=3)).hexdigest()


def test_unpublishable_blobs_are_refused_before_anything_is_written(store):
    with pytest.raises(ArtifactError):
        model_registry.publish(store, "c", b"not a model", {"count": 200})
    assert store.read_manifest("c") is None


def test_corrupt_stored_model_falls_back_to_plain_search(store, caplog):
    manifest = model_registry.publish(store, "c", _blob(), {"count": 200})
    blob = bytearray(store.read_blob("c", manifest["blob"]))
    blob[-40] ^= 0xFF
    store.write_blob("c", manifest["blob"], bytes(blob))
    queries = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    rewriter = QueryRewriter(store)
    with caplog.at_level(logging.WARNING, logger="amips"):
        result, report = rewriter.search("c", queries, 3, "hybrid", params=SearchParams(exact=True))
    assert report.fallback_reason.startswith("the model cannot be loaded") and report.plain == 5
    assert "plain search" in caplog.text
    plain = store.search("c", queries, 3, SearchParams(exact=True))
    np.testing.assert_array_equal(result.ids, plain.ids)


def test_model_of_another_dimension_falls_back_and_bad_queries_raise(store):
    model_registry.publish(store, "c", _blob(dim=6), {"count": 200})
    queries = np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
    _, report = QueryRewriter(store).search("c", queries, 3, "hybrid")
    assert "expects dimension 6" in report.fallback_reason
    for bad in (np.zeros((2, 7), np.float32), np.full((2, 8), np.nan, np.float32)):
        with pytest.raises(InputError):
            QueryRewriter(store).search("c", bad, 3, "hybrid")
    with pytest.raises(InputError):
        QueryRewriter(store).search("c", queries, 0, "hybrid")


@pytest.mark.parametrize("manifest", [{"version": 3}, {"version": 1, "blob": "x", "sha256": None},
                                      {"version": 1, "blob": 7}])
def test_malformed_or_foreign_manifests_fall_back_to_plain_search(store, manifest):
    store.write_manifest("c", manifest)
    queries = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    result, report = QueryRewriter(store).search("c", queries, 2, "hybrid", params=SearchParams(exact=True))
    assert report.fallback_reason.startswith("the model cannot be loaded") and report.plain == 3
    np.testing.assert_array_equal(result.ids, store.search("c", queries, 2, SearchParams(exact=True)).ids)
    assert model_registry.drop(store, "c") is True  # and it can be cleared
