"""A FAISS HNSW index behind the VectorStore interface, so the SAME product code (`tuning.tune`,
`serving_policy.serve`, `QueryRewriter.search` in every mode) runs over it, with every inner product
counted: the graph search's (FAISS hnsw_stats) and the exact rescoring of prefetched candidates.

Read-only: ids are 0..N−1, the manifest slots live in memory, and writes of points or blobs raise.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from amips_plugin.adapters.base import CollectionInfo, SearchParams, SearchResult, VectorStore
from amips_plugin.adapters.faiss_store import HNSWIndex


class FaissHNSWStore(VectorStore):
    """One collection, `name`, held in a FAISS IndexHNSWFlat (M links); `ipe` accumulates inner products."""

    location = "faiss-hnsw"

    def __init__(self, name: str, keys: np.ndarray, links: int = 32) -> None:
        self.name, self.keys = name, np.ascontiguousarray(keys, dtype=np.float32)
        self.index = HNSWIndex(self.keys, links=links)
        self.manifests: dict[str, dict[str, Any]] = {}
        self.inner_products = 0.0

    def collections(self) -> list[str]:
        return [self.name]

    def info(self, collection: str, using: str | None = None) -> CollectionInfo:
        return CollectionInfo(self.name, self.keys.shape[1], "dot", len(self.keys))

    def scroll(self, collection: str, batch_size: int,
               using: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.keys), batch_size):
            rows = np.arange(start, min(start + batch_size, len(self.keys)), dtype=np.int64)
            yield rows, self.keys[rows]

    def vector_spaces(self, collection: str) -> tuple[dict[str, tuple[int, str]], dict[str, str]]:
        return {"": (self.keys.shape[1], "dot")}, {}

    def all_ids(self, collection: str, batch_size: int) -> Iterator[np.ndarray]:
        for ids, _ in self.scroll(collection, batch_size):
            yield ids

    def search(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams,
               using: str | None = None) -> SearchResult:
        hits = self.index.search(queries, limit, params.hnsw_ef or 16)
        self.inner_products += hits.ipe * len(queries)
        return SearchResult(hits.ids.astype(np.int64), hits.scores.astype(np.float32))

    def search_prefetched(self, collection: str, queries: np.ndarray, prefetch: list[np.ndarray],
                          candidates: int, limit: int, params: SearchParams, using: str | None = None) -> SearchResult:
        """The Query API's prefetch + rescoring: each probe set's top `candidates`, their union rescored
        exactly by the query (one inner product per candidate, counted)."""
        pools = [self.search(collection, probes, candidates, params).ids for probes in prefetch]
        result = SearchResult.empty(len(queries), limit)
        for row, query in enumerate(queries):
            union = np.unique(np.concatenate([pool[row] for pool in pools]))
            union = union[union >= 0]
            scores = self.keys[union] @ query
            self.inner_products += len(union)
            best = np.argsort(-scores, kind="stable")[:limit]
            result.ids[row, :len(best)], result.scores[row, :len(best)] = union[best], scores[best]
        return result

    def retrieve(self, collection: str, ids: np.ndarray, using: str | None = None) -> np.ndarray:
        return self.keys[np.asarray(ids, dtype=np.int64)]

    def read_manifest(self, collection: str, slot: str = "model") -> dict[str, Any] | None:
        return self.manifests.get(slot)

    def write_manifest(self, collection: str, manifest: dict[str, Any] | None, slot: str = "model") -> None:
        if manifest is None:
            self.manifests.pop(slot, None)
        else:
            self.manifests[slot] = manifest

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the benchmark's FAISS store is read-only")

    create = upsert = existing = records = write_blob = read_blob = delete_blob = _read_only
