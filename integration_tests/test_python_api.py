"""The application-facing API: AmipsClient.query_points rewrites transparently and stays correct."""
import numpy as np
import pytest

from qdrant_client import QdrantClient, models

from amips_plugin.adapters import open_store
from amips_plugin import collection_ops
from amips_plugin.client import AmipsClient
from amips_plugin.train_config import TrainConfig

pytestmark = pytest.mark.slow  # trains models and drives real stores; `pytest -m 'not slow'` skips it

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
    client = AmipsClient(store, mode="hybrid")

    batch = client.query_batch_points("docs", [models.QueryRequest(query=q.tolist(), limit=5) for q in test[:50]])
    report = client.last_report
    assert report.mode == "hybrid" and report.model_version == 1 and report.fallback_reason is None
    assert report.rewritten >= 25  # the model answered (its confidence gate sends the unsure rest to plain search)
    for response, query in zip(batch, test[:50]):
        ids, scores = [p.id for p in response.points], [p.score for p in response.points]
        assert len(ids) == 5 and scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, keys[ids] @ query, rtol=1e-4)  # rescored by <x, y>, not by <ŷ, y>
    top1 = np.mean([r.points[0].id == t[0] for r, t in zip(batch, exact_top(keys, test[:50], 1))])
    assert top1 >= 0.9


def test_hybrid_never_loses_to_plain_search_at_equal_limit(store, mixture, mixture_truth):
    keys, train, test = mixture
    collection_ops.ingest(store, "docs", keys)
    collection_ops.train(store, "docs", train, TrainConfig(steps=300, noise_copies=1, device="cpu"), progress=False)
    client = AmipsClient(store, mode="hybrid")
    for limit in (1, 3):
        requests = [models.QueryRequest(query=q.tolist(), limit=limit, params=models.SearchParams(hnsw_ef=1))
                    for q in test]
        plain = client.query_batch_points("docs", requests, mode="off")
        hybrid = client.query_batch_points("docs", requests, mode="hybrid", candidates=limit)
        plain_hits = [t in [p.id for p in r.points] for r, t in zip(plain, mixture_truth)]
        hybrid_hits = [t in [p.id for p in r.points] for r, t in zip(hybrid, mixture_truth)]
        assert np.mean(hybrid_hits) >= np.mean(plain_hits)


def test_scalar_quantized_collection_rescores_with_the_original_vectors(store, mixture, mixture_truth):
    """int8 copies choose the candidates; the returned scores are the exact float32 inner products."""
    keys, _, test = mixture
    collection_ops.ingest(store, "docs", keys, quantization="int8")
    client = AmipsClient(store, mode="hybrid")
    params = models.SearchParams(hnsw_ef=64, quantization=models.QuantizationSearchParams(oversampling=4.0))
    results = client.query_batch_points("docs", [models.QueryRequest(query=q.tolist(), limit=5, params=params)
                                                 for q in test], mode="off")
    for result, query in zip(results[:50], test):
        ids = [p.id for p in result.points]
        np.testing.assert_allclose([p.score for p in result.points], keys[ids] @ query, rtol=1e-5)
    assert np.mean([t == r.points[0].id for r, t in zip(results, mixture_truth)]) > 0.97


def test_drop_in_client_matches_plain_qdrant_client_with_filters_payloads_and_offsets(tmp_path, mixture):
    """Wrapping the application's own QdrantClient: the same call, the same answers as plain qdrant-client
    (exact search), with filter, payload selection, vectors, offset and score threshold honoured."""
    keys, train, test = mixture
    app = QdrantClient(path=str(tmp_path / "app"))
    app.create_collection("docs", vectors_config=models.VectorParams(size=keys.shape[1], distance=models.Distance.DOT))
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(len(keys))]
    app.upsert("docs", points=[models.PointStruct(id=i, vector=v.tolist(), payload={"group": n % 3, "n": n})
                               for n, (i, v) in enumerate(zip(ids, keys))], wait=True)
    client = AmipsClient(app, mode="hybrid")
    client.train("docs", train, TrainConfig(steps=200, noise_copies=1, device="cpu"))
    flt = models.Filter(must=[models.FieldCondition(key="group", match=models.MatchValue(value=1))])
    exact = models.SearchParams(exact=True)
    for q in test[:20]:
        kwargs = dict(query=q.tolist(), query_filter=flt, search_params=exact, limit=4, offset=1,
                      with_payload=models.PayloadSelectorInclude(include=["n"]), with_vectors=True)
        ours, theirs = client.query_points("docs", **kwargs), app.query_points("docs", **kwargs)
        assert client.last_report.rewritten == 1 and client.last_report.fallback_reason is None
        assert [p.id for p in ours.points] == [p.id for p in theirs.points]
        assert [p.payload for p in ours.points] == [p.payload for p in theirs.points]
        assert all(p.payload["n"] % 3 == 1 for p in ours.points)
        np.testing.assert_allclose([p.score for p in ours.points], [p.score for p in theirs.points], rtol=1e-5)
        np.testing.assert_allclose([p.vector for p in ours.points], [p.vector for p in theirs.points], rtol=1e-6)
    threshold = float(np.sort(test[0] @ keys.T)[-4:-2].mean())  # between the 3rd and 4th best scores
    above = client.query_points("docs", query=test[0], score_threshold=threshold, limit=10, search_params=exact)
    assert len(above.points) == 3
    by_id = client.query_points("docs", query=ids[5], limit=2)  # not a vector: qdrant-client answers it
    assert by_id.points and client.count("docs").count == len(keys)  # and the rest of its API is there
    client.close()  # leaves the application's client open
    assert app.count("docs").count == len(keys)
    app.close()


def test_edge_filters_apply_to_every_prefetch(tmp_path, mixture):
    keys, train, test = mixture
    store = open_store(f"edge:{tmp_path / 'edge'}")
    collection_ops.ingest(store, "docs", keys, payloads=[{"group": n % 4} for n in range(len(keys))])
    client = AmipsClient(store, mode="hybrid")
    client.train("docs", train, TrainConfig(steps=200, noise_copies=1, device="cpu"))
    flt = models.Filter(must_not=[models.FieldCondition(key="group", match=models.MatchAny(any=[0, 1, 2]))])
    allowed = np.flatnonzero(np.arange(len(keys)) % 4 == 3)
    for mode in ("off", "replace", "hybrid"):
        response = client.query_batch_points("docs", [
            models.QueryRequest(query=q.tolist(), limit=3, filter=flt, params=models.SearchParams(exact=True),
                                with_payload=True) for q in test[:30]], mode=mode)
        for r, q in zip(response, test[:30]):
            assert [p.id for p in r.points] == allowed[np.argsort(-(keys[allowed] @ q))[:3]].tolist(), mode
            assert all(p.payload == {"group": 3} for p in r.points)
    client.close()


def test_a_model_is_refreshed_while_the_application_serves(tmp_path, mixture):
    """Retraining on a background thread: queries keep being answered, first by the old model, then by
    the new one, never with an error."""
    import threading

    keys, train, test = mixture
    client = AmipsClient(f"edge:{tmp_path / 'edge'}", mode="hybrid")
    collection_ops.ingest(client.store, "docs", keys)
    first = client.train("docs", train, TrainConfig(steps=100, noise_copies=0, device="cpu"))
    trainer = threading.Thread(target=client.train, args=("docs", train, TrainConfig(steps=150, noise_copies=0,
                                                                                       device="cpu")))
    trainer.start()
    versions = set()
    while trainer.is_alive() or len(versions) < 2:
        client.query_points("docs", query=test[len(versions)], limit=3)
        assert client.last_report.fallback_reason is None
        versions.add(client.last_report.model_version)
        if not trainer.is_alive() and len(versions) < 2:
            client.query_points("docs", query=test[0], limit=3)
            versions.add(client.last_report.model_version)
            break
    trainer.join()
    assert versions == {first["version"], first["version"] + 1}
    client.close()


def test_a_batch_is_grouped_by_equal_options_whichever_objects_carry_them(tmp_path, mixture):
    """`query_batch_points` answers requests with equal options in one store call: equal filters given as distinct
    objects share a call, different filters and limits do not, and every answer is its own request's."""
    keys, _, test = mixture
    store = open_store(f"edge:{tmp_path / 'edge'}")
    collection_ops.ingest(store, "docs", keys, payloads=[{"group": n % 4} for n in range(len(keys))])
    client = AmipsClient(store, mode="off")

    def group(value: int) -> models.Filter:
        return models.Filter(must=[models.FieldCondition(key="group", match=models.MatchValue(value=value))])

    exact, one, same_as_one, two = models.SearchParams(exact=True), group(1), group(1), group(2)
    options = [(one, 3), (same_as_one, 3), (two, 3), (one, 5)] * 6
    calls = []
    search = store.search
    store.search = lambda *args, **kw: calls.append(len(args[1])) or search(*args, **kw)
    responses = client.query_batch_points("docs", [models.QueryRequest(query=q.tolist(), limit=limit, filter=flt,
                                                                       params=exact)
                                                   for q, (flt, limit) in zip(test, options)])
    assert sorted(calls) == [6, 6, 12]  # (group 1, limit 3) twice over, (group 2, 3), (group 1, 5)
    for response, q, (flt, limit) in zip(responses, test, options):
        allowed = np.flatnonzero(np.arange(len(keys)) % 4 == flt.must[0].match.value)
        assert [p.id for p in response.points] == allowed[np.argsort(-(keys[allowed] @ q))[:limit]].tolist()
    client.close()
