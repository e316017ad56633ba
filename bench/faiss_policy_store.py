"""A FAISS HNSW index behind the VectorStore methods that `tuning.tune` and `serving_policy.serve` call,
so the SAME policy code runs over it, with every search's inner products counted (FAISS hnsw_stats).

Only what tuning and serving read is implemented (info, scroll, search, the manifest slots in memory);
the rest of the interface raises, since the benchmark never writes points or blobs through it.
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

    def info(self, collection: str) -> CollectionInfo:
        return CollectionInfo(self.name, self.keys.shape[1], "dot", len(self.keys))

    def scroll(self, collection: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.keys), batch_size):
            rows = np.arange(start, min(start + batch_size, len(self.keys)), dtype=np.int64)
            yield rows, self.keys[rows]

    def search(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams) -> SearchResult:
        hits = self.index.search(queries, limit, params.hnsw_ef or 16)
        self.inner_products += hits.ipe * len(queries)
        return SearchResult(hits.ids.astype(np.int64), hits.scores.astype(np.float32))

    def read_manifest(self, collection: str, slot: str = "model") -> dict[str, Any] | None:
        return self.manifests.get(slot)

    def write_manifest(self, collection: str, manifest: dict[str, Any] | None, slot: str = "model") -> None:
        if manifest is None:
            self.manifests.pop(slot, None)
        else:
            self.manifests[slot] = manifest

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the benchmark's FAISS store is read-only")

    create = upsert = search_prefetched = retrieve = write_blob = read_blob = delete_blob = _read_only
