"""The Edge adapter hands each query to the engine as a float32 memoryview (`edge_store._engine_vectors`), not a
list of Python floats: the engine must read the very same vector — same hits, same scores — for every layout and
dtype the query path can pass, prefetched (hybrid) searches included."""
from __future__ import annotations

import numpy as np
import pytest
import qdrant_edge as edge

from amips_plugin.adapters import SearchParams
from amips_plugin.adapters.edge_store import EdgeStore


def _listed_answers(shard: edge.EdgeShard, queries: np.ndarray, limit: int) -> list[list[tuple[int, float]]]:
    """The engine's answers to each query given as a list of floats (the engine's documented input)."""
    return [[(int(p.id), p.score) for p in shard.query(edge.QueryRequest(
        limit=limit, query=edge.Query.Nearest(q), params=edge.SearchParams(exact=True), with_payload=False,
        with_vector=False))] for q in np.asarray(queries, dtype=np.float32).tolist()]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> EdgeStore:
    rng = np.random.default_rng(3)
    store = EdgeStore(tmp_path_factory.mktemp("edge"))
    store.create("docs", 24, "dot")
    store.upsert("docs", np.arange(600), rng.normal(size=(600, 24)).astype(np.float32))
    return store


@pytest.mark.parametrize("layout", ["float32", "float64", "a column slice", "fortran order", "a subnormal"])
def test_every_query_layout_reaches_the_engine_as_the_same_vector(store: EdgeStore, layout: str) -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(size=(20, 48)).astype(np.float32)
    queries = {"float32": base[:, :24], "float64": base[:, :24].astype(np.float64),
               "a column slice": base[:, ::2], "fortran order": np.asfortranarray(base[:, :24]),
               "a subnormal": np.where(np.arange(24) == 0, np.float32(1e-40), base[:, :24])}[layout]
    got = store.search("docs", queries, 5, SearchParams(exact=True))
    expected = _listed_answers(store._shard("docs"), queries, 5)
    assert got.ids.tolist() == [[i for i, _ in row] for row in expected]
    assert got.scores.tolist() == [[np.float32(s) for _, s in row] for row in expected]


def test_a_prefetched_search_reads_each_probe_and_query_as_given(store: EdgeStore) -> None:
    rng = np.random.default_rng(9)
    queries = rng.normal(size=(12, 24)).astype(np.float32)
    probe = rng.normal(size=(12, 24))  # float64: converted like the queries
    got = store.search_prefetched("docs", queries, [probe], 50, 5, SearchParams(exact=True))
    shard = store._shard("docs")
    for row in range(len(queries)):
        candidates = {int(p.id) for p in shard.query(edge.QueryRequest(
            limit=50, query=edge.Query.Nearest(probe[row].astype(np.float32).tolist()),
            params=edge.SearchParams(exact=True), with_payload=False, with_vector=False))}
        rescored = sorted(((float(np.float32(p.score)), int(p.id)) for p in shard.query(edge.QueryRequest(
            limit=600, query=edge.Query.Nearest(queries[row].tolist()), params=edge.SearchParams(exact=True),
            with_payload=False, with_vector=False)) if int(p.id) in candidates), reverse=True)[:5]
        assert got.ids[row].tolist() == [i for _, i in rescored]
