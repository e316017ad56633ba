"""A small client for applications, mirroring qdrant-client's `query_points`, that rewrites transparently.

    client = AmipsClient("edge:./data")                     # or ":memory:", a directory, a URL
    hits = client.query_points("docs", query=vector, limit=10).points
    # hits[0].id, hits[0].score — ranked by the true inner product with `vector`

Rewriting follows the collection's stored model (mode "hybrid" by default); without a usable model
the same call is a plain search.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from adapters import SearchParams, VectorStore, open_store

from .rewriting import QueryRewriter, SearchReport


@dataclass(frozen=True)
class ScoredPoint:
    id: int
    score: float


@dataclass(frozen=True)
class QueryResponse:
    points: list[ScoredPoint]
    report: SearchReport = field(compare=False, repr=False, default=None)  # type: ignore[assignment]


class AmipsClient:
    def __init__(self, store: VectorStore | str, api_key: str | None = None) -> None:
        self.store = open_store(store, api_key) if isinstance(store, str) else store
        self.rewriter = QueryRewriter(self.store)

    def query_batch_points(self, collection_name: str, queries: np.ndarray | Sequence[Sequence[float]],
                           limit: int = 10, mode: str = "hybrid", candidates: int | None = None,
                           hnsw_ef: int | None = None, exact: bool = False,
                           oversampling: float | None = None) -> list[QueryResponse]:
        params = SearchParams(hnsw_ef=hnsw_ef, exact=exact, oversampling=oversampling)
        result, report = self.rewriter.search(collection_name, np.asarray(queries, dtype=np.float32), limit, mode,
                                              candidates, params)
        return [QueryResponse([ScoredPoint(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0], report)
                for ids, scores in zip(result.ids, result.scores)]

    def query_points(self, collection_name: str, query: np.ndarray | Sequence[float], limit: int = 10,
                     mode: str = "hybrid", candidates: int | None = None, hnsw_ef: int | None = None,
                     exact: bool = False, oversampling: float | None = None) -> QueryResponse:
        return self.query_batch_points(collection_name, np.asarray(query, dtype=np.float32)[None, :], limit, mode,
                                       candidates, hnsw_ef, exact, oversampling)[0]

    def close(self) -> None:
        self.store.close()
