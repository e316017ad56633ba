"""The application-facing API: AmipsClient.query_points rewrites transparently and stays correct."""
import numpy as np
import pytest

from adapters import open_store
from amips_plugin import collections as collection_ops
from amips_plugin.client import AmipsClient
from amips_plugin.training import TrainConfig

SPECS = [":memory:", "edge"]


def exact_top(keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ keys.T), axis=1)[:, :k]


@pytest.fixture(params=SPECS)
def store(request, tmp_path):
    store = open_store(request.param if request.param != "edge" else f"edge:{tmp_path / 'edge'}")
    yield store
    store.close()


def test_query_points_rewrites_and_ranks_by_the_true_inner_product(store, mixture):
    keys, train, test = mixture
    collection_ops.ingest(store, "docs", keys)
    collection_ops.train(store, "docs", train, TrainConfig(steps=300, noise_copies=1, device="cpu"), progress=False)
    client = AmipsClient(store)

    response = client.query_points("docs", query=test[0], limit=5, exact=True)
    assert [p.id for p in response.points] == list(exact_top(keys, test[:1], 5)[0])
    scores = [p.score for p in response.points]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, keys[[p.id for p in response.points]] @ test[0], rtol=1e-4)

    batch = client.query_batch_points("docs", test[:50], limit=3, exact=True)
    assert batch[0].report.rewritten + batch[0].report.plain == 50
    assert all([p.id for p in r.points] == list(t) for r, t in zip(batch, exact_top(keys, test[:50], 3)))


def test_hybrid_never_loses_to_plain_search_at_equal_limit(store, mixture, mixture_truth):
    keys, train, test = mixture
    collection_ops.ingest(store, "docs", keys)
    collection_ops.train(store, "docs", train, TrainConfig(steps=300, noise_copies=1, device="cpu"), progress=False)
    client = AmipsClient(store)
    for limit in (1, 3):
        plain = client.query_batch_points("docs", test, limit=limit, mode="off", hnsw_ef=1)
        hybrid = client.query_batch_points("docs", test, limit=limit, mode="hybrid", candidates=limit, hnsw_ef=1)
        plain_hits = [t in [p.id for p in r.points] for r, t in zip(plain, mixture_truth)]
        hybrid_hits = [t in [p.id for p in r.points] for r, t in zip(hybrid, mixture_truth)]
        assert np.mean(hybrid_hits) >= np.mean(plain_hits)


def test_scalar_quantized_collection_rescores_with_the_original_vectors(store, mixture, mixture_truth):
    """int8 copies choose the candidates; the returned scores are the exact float32 inner products."""
    keys, _, test = mixture
    collection_ops.ingest(store, "docs", keys, scalar_quantization=True)
    client = AmipsClient(store)
    results = client.query_batch_points("docs", test, limit=5, mode="off", hnsw_ef=64, oversampling=4.0)
    for result, query in zip(results[:50], test):
        ids = [p.id for p in result.points]
        np.testing.assert_allclose([p.score for p in result.points], keys[ids] @ query, rtol=1e-5)
    assert np.mean([t == r.points[0].id for r, t in zip(results, mixture_truth)]) > 0.97
