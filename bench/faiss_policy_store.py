"""FAISS indexes behind the VectorStore interface, so the SAME product code (`QueryRewriter.search` in
every mode, `tuning.tune`, `serving_policy.serve`) runs over them, with every inner product counted:
the index's own (FAISS stats) and the exact rescoring of prefetched candidates.

The index's one effort knob (efSearch for HNSW, nprobe for IVF) is read from `SearchParams.hnsw_ef`.
Ids are 0..N−1; the manifest slots and blobs (models published as `amips import` would) live in memory;
writing points raises.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from amips_plugin.adapters.base import CollectionInfo, SearchParams, SearchResult, VectorStore
from bench.faiss_store import Hits, HNSWIndex, IVFIndex
from amips_plugin.core.errors import ArtifactError
from amips_plugin.core.manifest_schema import ManifestSchema, validate_manifest

Search = Callable[[np.ndarray, int, int], Hits]  # (queries, k, knob) -> Hits


class FaissStore(VectorStore):
    """One collection, `name`, searched by `search`; `inner_products` accumulates every inner product."""

    location = "faiss"

    def __init__(self, name: str, keys: np.ndarray, search: Search, default_knob: int = 16) -> None:
        self.name, self.keys = name, np.ascontiguousarray(keys, dtype=np.float32)
        self._search, self.default_knob = search, default_knob
        self.manifests: dict[str, dict[str, Any]] = {}
        self.blobs: dict[int, bytes] = {}
        self.inner_products = 0.0

    def collections(self) -> list[str]:
        return [self.name]

    def vector_spaces(self, collection: str) -> tuple[dict[str, tuple[int, str]], dict[str, str]]:
        return {"": (self.keys.shape[1], "dot")}, {}

    def info(self, collection: str, using: str | None = None) -> CollectionInfo:
        return CollectionInfo(self.name, self.keys.shape[1], "dot", len(self.keys))

    def scroll(self, collection: str, batch_size: int,
               using: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.keys), batch_size):
            rows = np.arange(start, min(start + batch_size, len(self.keys)), dtype=np.int64)
            yield rows, self.keys[rows]

    def all_ids(self, collection: str, batch_size: int) -> Iterator[np.ndarray]:
        for ids, _ in self.scroll(collection, batch_size):
            yield ids

    def search(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams,
               using: str | None = None) -> SearchResult:
        """The index's top `limit`; a short row (an IVF probe of lists holding fewer keys) is padded as the
        store interface pads, with −inf scores (FAISS pads with −FLT_MAX, which reads as a real score)."""
        hits = self._search(queries, limit, params.hnsw_ef or self.default_knob)
        self.inner_products += hits.ipe * len(queries)
        scores = np.where(hits.ids >= 0, hits.scores, -np.inf).astype(np.float32)
        return SearchResult(hits.ids.astype(np.int64), scores)

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

    def read_manifest(self, collection: str, slot: str = "model") -> ManifestSchema | None:
        return validate_manifest(self.manifests.get(slot), slot, collection)

    def write_manifest(self, collection: str, manifest: dict[str, Any] | None, slot: str = "model") -> None:
        if manifest is None:
            self.manifests.pop(slot, None)
        else:
            self.manifests[slot] = manifest

    def write_blob(self, collection: str, blob_id: int, data: bytes) -> None:
        self.blobs[blob_id] = data

    def read_blob(self, collection: str, blob_id: int, max_bytes: int = 1 << 30) -> bytes:
        if blob_id not in self.blobs:
            raise ArtifactError(f"blob {blob_id} is missing")
        return self.blobs[blob_id]

    def delete_blob(self, collection: str, blob_id: int | None) -> None:
        if blob_id is None:
            self.blobs.clear()
        else:
            self.blobs.pop(blob_id, None)

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the benchmark's FAISS store holds its keys fixed")

    create = upsert = existing = records = _read_only


class FaissHNSWStore(FaissStore):
    """A FAISS IndexHNSWFlat (M links); the knob is efSearch."""

    def __init__(self, name: str, keys: np.ndarray, links: int = 32) -> None:
        self.index = HNSWIndex(np.ascontiguousarray(keys, dtype=np.float32), links=links)
        super().__init__(name, keys, self.index.search)


class FaissIVFStore(FaissStore):
    """A FAISS IndexIVFFlat of `nlist` k-means lists (default ≈ 4·√N); the knob is nprobe. A search costs
    the coarse quantizer's nlist inner products plus one per key of the probed lists."""

    def __init__(self, name: str, keys: np.ndarray, nlist: int | None = None, default_nprobe: int = 8) -> None:
        self.index = IVFIndex(np.ascontiguousarray(keys, dtype=np.float32), nlist or round(4 * np.sqrt(len(keys))))
        super().__init__(name, keys, self.index.search, default_nprobe)
