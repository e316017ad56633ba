"""Qdrant through qdrant-client: local mode (":memory:" or a directory) and servers/clusters by URL.

Local mode is exact brute force in Python (fine for tests and small data, and it warns above 20k
points); the same calls reach a server, where the collection is HNSW-indexed and sharded.
The model rides along as DESIGN.md §5 says: the manifest in the collection's metadata under
"amips" (the compressed key store's under "amips_pq"), the blobs as ≤ 1 MiB base64 chunks in
payload-only points of `<collection>__amips`.
"""
from __future__ import annotations

import base64
import time
from typing import Any, Iterator

import numpy as np
from qdrant_client import QdrantClient, models

from amips_plugin.errors import ArtifactError, InputError, StoreError, UnknownCollectionError

from .base import CollectionInfo, SearchParams, SearchResult, VectorStore, collect_results, records_as_arrays

SIDECAR_SUFFIX = "__amips"
METADATA_KEYS = {"model": "amips", "pq": "amips_pq"}
CHUNK_BYTES = 1 << 20
_CHUNK_ID_BITS = 20  # point id = blob id (40 bits) << 20 | chunk index
UPSERT_BATCH = 1024
_DISTANCE = {"dot": models.Distance.DOT, "cosine": models.Distance.COSINE}
_DISTANCE_NAME = {v: k for k, v in _DISTANCE.items()}


class QdrantClientStore(VectorStore):
    def __init__(self, location: str, api_key: str | None = None, timeout: int = 30, attempts: int = 3,
                 backoff: float = 0.5) -> None:
        self.location = location
        if location == ":memory:":
            self.client = QdrantClient(":memory:")
        elif location.startswith(("http://", "https://")):
            self.client = QdrantClient(url=location, api_key=api_key, timeout=timeout)
            self._wait_for_server(attempts, backoff)
        else:
            self.client = QdrantClient(path=location)

    def _wait_for_server(self, attempts: int, backoff: float) -> None:
        """Probe the server, retrying with exponential backoff (backoff, 2·backoff, …) before giving up."""
        for attempt in range(attempts):
            try:
                self.client.get_collections()
                return
            except Exception as exc:  # connection refused, timeout, TLS, auth: all end the same way
                last = exc
                if attempt + 1 < attempts:
                    time.sleep(backoff * 2 ** attempt)
        self.client.close()
        raise StoreError(f"cannot reach Qdrant at {self.location} after {attempts} attempts: {last}")

    # collections -----------------------------------------------------------------------------
    def collections(self) -> list[str]:
        names = [c.name for c in self.client.get_collections().collections]
        return sorted(n for n in names if not n.endswith(SIDECAR_SUFFIX))

    def _require(self, collection: str) -> None:
        if collection.endswith(SIDECAR_SUFFIX) or not self.client.collection_exists(collection):
            raise UnknownCollectionError(f"unknown collection {collection!r} in {self.location}")

    def info(self, collection: str) -> CollectionInfo:
        self._require(collection)
        params = self.client.get_collection(collection).config.params.vectors
        if not isinstance(params, models.VectorParams):
            raise UnknownCollectionError(f"collection {collection!r} has no single unnamed dense vector")
        count = self.client.count(collection, exact=True).count
        return CollectionInfo(collection, params.size, _DISTANCE_NAME.get(params.distance, str(params.distance)), count)

    def create(self, collection: str, dim: int, distance: str, shards: int | None = None,
               replication_factor: int | None = None) -> None:
        self.client.create_collection(collection, vectors_config=models.VectorParams(size=dim, distance=_DISTANCE[distance]),
                                      shard_number=shards, replication_factor=replication_factor)

    def upsert(self, collection: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        for start in range(0, len(ids), UPSERT_BATCH):
            batch = models.Batch(ids=[int(i) for i in ids[start:start + UPSERT_BATCH]],
                                 vectors=vectors[start:start + UPSERT_BATCH].tolist())
            self.client.upsert(collection, points=batch, wait=True)

    def scroll(self, collection: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self._require(collection)
        offset = None
        while True:
            records, offset = self.client.scroll(collection, limit=batch_size, offset=offset, with_vectors=True,
                                                 with_payload=False)
            if records:
                yield records_as_arrays(records)
            if offset is None:
                return

    # search ----------------------------------------------------------------------------------
    @staticmethod
    def _params(params: SearchParams) -> models.SearchParams:
        return models.SearchParams(hnsw_ef=params.hnsw_ef, exact=params.exact)

    def _run(self, collection: str, requests: list[models.QueryRequest], limit: int) -> SearchResult:
        responses = self.client.query_batch_points(collection, requests=requests)
        return collect_results([response.points for response in responses], limit)

    def search(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams) -> SearchResult:
        self._require(collection)
        requests = [models.QueryRequest(query=q.tolist(), limit=limit, params=self._params(params)) for q in queries]
        return self._run(collection, requests, limit)

    def search_prefetched(self, collection: str, queries: np.ndarray, prefetch: list[np.ndarray],
                          candidates: int, limit: int, params: SearchParams) -> SearchResult:
        self._require(collection)
        requests = [
            models.QueryRequest(
                prefetch=[models.Prefetch(query=p[row].tolist(), limit=candidates, params=self._params(params))
                          for p in prefetch],
                query=queries[row].tolist(), limit=limit, params=self._params(params))
            for row in range(len(queries))
        ]
        return self._run(collection, requests, limit)

    # what rides along --------------------------------------------------------------------------
    def retrieve(self, collection: str, ids: np.ndarray) -> np.ndarray:
        self._require(collection)
        records = {int(r.id): r.vector for r in self.client.retrieve(collection, [int(i) for i in ids], with_vectors=True)}
        missing = [int(i) for i in ids if int(i) not in records]
        if missing:
            raise InputError(f"{len(missing)} ids not in {collection!r}, e.g. {missing[:3]}")
        return np.array([records[int(i)] for i in ids], dtype=np.float32).reshape(len(ids), -1)

    def read_manifest(self, collection: str, slot: str = "model") -> dict[str, Any] | None:
        self._require(collection)
        metadata = self.client.get_collection(collection).config.metadata or {}
        return metadata.get(METADATA_KEYS[slot]) or None

    def write_manifest(self, collection: str, manifest: dict[str, Any] | None, slot: str = "model") -> None:
        self._require(collection)
        self.client.update_collection(collection, metadata={METADATA_KEYS[slot]: manifest})

    def _sidecar(self, collection: str) -> str:
        return collection + SIDECAR_SUFFIX

    def write_blob(self, collection: str, blob_id: int, data: bytes) -> None:
        self._require(collection)
        sidecar = self._sidecar(collection)
        if not self.client.collection_exists(sidecar):
            self.client.create_collection(sidecar, vectors_config={})
        chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
        for index, chunk in enumerate(chunks):
            payload = {"blob": blob_id, "index": index, "total": len(chunks),
                       "data": base64.b64encode(chunk).decode("ascii")}
            point = models.PointStruct(id=(blob_id << _CHUNK_ID_BITS) | index, vector={}, payload=payload)
            self.client.upsert(sidecar, points=[point], wait=True)

    def read_blob(self, collection: str, blob_id: int) -> bytes:
        sidecar = self._sidecar(collection)
        first = self.client.retrieve(sidecar, [blob_id << _CHUNK_ID_BITS]) if self.client.collection_exists(sidecar) else []
        if not first:
            raise ArtifactError(f"model blob {blob_id} of {collection!r} is missing from the store")
        total = int(first[0].payload["total"])
        ids = [(blob_id << _CHUNK_ID_BITS) | i for i in range(total)]
        records = {int(r.id): r for r in self.client.retrieve(sidecar, ids)}
        if len(records) != total:
            raise ArtifactError(f"model blob {blob_id} of {collection!r} is incomplete ({len(records)} of {total} chunks)")
        return b"".join(base64.b64decode(records[i].payload["data"]) for i in ids)

    def delete_blob(self, collection: str, blob_id: int | None) -> None:
        sidecar = self._sidecar(collection)
        if not self.client.collection_exists(sidecar):
            return
        if blob_id is None:
            self.client.delete_collection(sidecar)
            return
        chunks = models.Filter(must=[models.FieldCondition(key="blob", match=models.MatchValue(value=blob_id))])
        self.client.delete(sidecar, points_selector=models.FilterSelector(filter=chunks), wait=True)

    def close(self) -> None:
        self.client.close()
