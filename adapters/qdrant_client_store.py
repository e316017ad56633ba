"""Qdrant through qdrant-client: local mode (":memory:" or a directory) and servers/clusters by URL.

Local mode is exact brute force in Python (fine for tests and small data, and it warns above 20k
points); the same calls reach a server, where the collection is HNSW-indexed and sharded.
The model rides along as DESIGN.md §5 says: the manifest in the collection's metadata under
"amips" (the compressed key store's under "amips_pq"), the blobs as ≤ 1 MiB base64 chunks in
payload-only points of `<collection>__amips`.

Writers of the manifests serialise on a lock (`manifest_lock`), which makes the registry's
read-check-write of a manifest a compare-and-swap:

- local mode: the client is this process's alone (":memory:" is private, a directory is locked by
  qdrant-client against other processes), so a lock in this object is the whole story; every call
  into the local client also runs under one lock here, since local mode is not thread-safe itself.
- a server (shared between processes): a leased lock point in the sidecar, taken with a
  conditional upsert (`update_filter`: only when the lease has expired; an absent point is
  inserted), which the server applies atomically, then read back to see who holds it. The lease
  (LEASE_SECONDS) frees the lock of a writer that died inside the few milliseconds it is held.
  Residual window, stated honestly: a holder paused for longer than the lease (or clocks between
  clients skewed by more than it) can still commit after another writer took the lock over.

Server errors (connection lost, HTTP failures) surface as one-line StoreErrors.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import logging
import secrets
import threading
import time
from typing import Any, Iterator

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from amips_plugin.errors import ArtifactError, InputError, StoreBusyError, StoreError, UnknownCollectionError

from .base import (SCALAR_QUANTILE, CollectionInfo, SearchParams, SearchResult, VectorStore, collect_results,
                   records_as_arrays)

SIDECAR_SUFFIX = "__amips"
METADATA_KEYS = {"model": "amips", "pq": "amips_pq", "router": "amips_router", "policy": "amips_policy"}
CHUNK_BYTES = 1 << 20
_CHUNK_ID_BITS = 20  # point id = blob id (40 bits) << 20 | chunk index
UPSERT_BATCH = 1024
_DISTANCE = {"dot": models.Distance.DOT, "cosine": models.Distance.COSINE}
_DISTANCE_NAME = {v: k for k, v in _DISTANCE.items()}
LOCK_POINT_ID = 1 << 62  # above every blob chunk id (< 2**60)
LEASE_SECONDS = 60.0
_LEASE_POLL_SECONDS = 0.05
log = logging.getLogger("amips")


class _GuardedClient:
    """The client's methods, run under `lock` (local mode) and with server failures as StoreError."""

    def __init__(self, client: QdrantClient, lock: threading.RLock | None) -> None:
        self._client, self._lock = client, lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock if self._lock is not None else contextlib.nullcontext():
                try:
                    return attr(*args, **kwargs)
                except (ResponseHandlingException, UnexpectedResponse) as exc:
                    raise StoreError(f"the Qdrant server failed: {' '.join(str(exc).split())}") from None

        return call


class QdrantClientStore(VectorStore):
    def __init__(self, location: str, api_key: str | None = None, timeout: int = 30, attempts: int = 3,
                 backoff: float = 0.5, shared: bool | None = None) -> None:
        """`shared`: whether other processes may write this store's manifests (default: only for a URL),
        which selects the leased lock point over an in-process lock."""
        self.location = location
        remote = location.startswith(("http://", "https://"))
        self.shared = remote if shared is None else shared
        if location == ":memory:":
            client = QdrantClient(":memory:")
        elif remote:
            client = QdrantClient(url=location, api_key=api_key, timeout=timeout)
        else:
            client = QdrantClient(path=location)
        self.client: Any = _GuardedClient(client, None if remote else threading.RLock())
        if remote:
            self._wait_for_server(attempts, backoff)

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
               replication_factor: int | None = None, scalar_quantization: bool = False) -> None:
        quantization = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, quantile=SCALAR_QUANTILE, always_ram=True)) if scalar_quantization else None
        self.client.create_collection(collection, vectors_config=models.VectorParams(size=dim, distance=_DISTANCE[distance]),
                                      shard_number=shards, replication_factor=replication_factor,
                                      quantization_config=quantization)

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
        quantization = None if params.oversampling is None else models.QuantizationSearchParams(
            ignore=False, rescore=True, oversampling=params.oversampling)
        return models.SearchParams(hnsw_ef=params.hnsw_ef, exact=params.exact, quantization=quantization)

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

    def _ensure_sidecar(self, collection: str) -> str:
        self._require(collection)
        sidecar = self._sidecar(collection)
        if not self.client.collection_exists(sidecar):
            try:
                self.client.create_collection(sidecar, vectors_config={})
            except Exception:
                if not self.client.collection_exists(sidecar):  # not another writer creating it first
                    raise
        return sidecar

    def write_blob(self, collection: str, blob_id: int, data: bytes) -> None:
        sidecar = self._ensure_sidecar(collection)
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

    # the manifest lock ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def manifest_lock(self, collection: str) -> Iterator[None]:
        with super().manifest_lock(collection):  # the threads of this process
            if not self.shared:
                yield
                return
            sidecar, token, timeout = self._ensure_sidecar(collection), secrets.token_hex(8), self.manifest_lock_timeout
            deadline = time.monotonic() + timeout
            while not self._take_lease(sidecar, token):
                if time.monotonic() >= deadline:
                    raise StoreBusyError(f"another writer kept the manifest lock of {collection!r} for over "
                                         f"{timeout:g}s (a dead writer's lease expires within {LEASE_SECONDS:.0f}s)")
                time.sleep(_LEASE_POLL_SECONDS)
            try:
                yield
            finally:
                self._conditional_upsert(sidecar, {"lock": "", "expires": 0.0},  # release, if still ours
                                         models.FieldCondition(key="lock", match=models.MatchValue(value=token)),
                                         quiet=True)

    def _conditional_upsert(self, sidecar: str, payload: dict[str, Any], condition: models.FieldCondition,
                            quiet: bool = False) -> None:
        point = models.PointStruct(id=LOCK_POINT_ID, vector={}, payload=payload)
        try:
            self.client.upsert(sidecar, points=[point], update_filter=models.Filter(must=[condition]), wait=True,
                               ordering=models.WriteOrdering.STRONG)
        except StoreError as exc:
            if not quiet:
                raise
            log.warning("amips: could not release the manifest lock of %r (its lease expires by itself): %s",
                        sidecar, exc)

    def _take_lease(self, sidecar: str, token: str) -> bool:
        """One attempt: the server applies the upsert only where the lease has expired (or there is no
        lock point yet); reading the point back says whose it is."""
        now = time.time()
        self._conditional_upsert(sidecar, {"lock": token, "expires": now + LEASE_SECONDS},
                                 models.FieldCondition(key="expires", range=models.Range(lt=now)))
        held = self.client.retrieve(sidecar, [LOCK_POINT_ID], with_payload=True)
        return bool(held) and (held[0].payload or {}).get("lock") == token

    def close(self) -> None:
        self.client.close()
