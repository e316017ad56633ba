"""Qdrant through qdrant-client: local mode (":memory:" or a directory) and servers/clusters by URL.

Local mode is exact brute force in Python (fine for tests and small data, and it warns above 20k
points); the same calls reach a server, where the collection is HNSW-indexed and sharded.
The model rides along as docs/design.md §5 says: the manifest in the collection's metadata under
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
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.local.qdrant_local import QdrantLocal
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from amips_plugin.core.errors import ArtifactError, InputError, StoreBusyError, StoreError, UnknownCollectionError
from amips_plugin.core.limits import MAX_BLOB_BYTES, MAX_VERSION
from amips_plugin.core.manifest_schema import ManifestSchema, validate_manifest
from amips_plugin.core.redact import redact, userinfo

from amips_plugin.core import point_ids
from . import storage
from .base import (UNNAMED, CollectionInfo, SearchParams, SearchResult, VectorSpaces, VectorStore, WriteStamp,
                   classify_vectors, collect_results, engine_search_params, pages, records_as_arrays,
                   split_slot, vector_of, vectors_in_order)
from .names import SIDECAR_SUFFIX, check_collection_name

SIDECAR_MARKER = "amips_sidecar_of"  # the sidecar's metadata: {SIDECAR_MARKER: collection}
METADATA_KEYS = {"model": "amips", "pq": "amips_pq", "router": "amips_router", "policy": "amips_policy"}
STAMP_KEY = "amips_stamp"  # the collection's WriteStamp
PENDING_WRITE_KEY = "amips_pending_write"  # an append that started and has not finished
CHUNK_BYTES = 1 << 20
_CHUNK_ID_BITS = 20  # point id = blob id (40 bits) << 20 | chunk index
UPSERT_BATCH = 1024
_DISTANCE = {"dot": models.Distance.DOT, "cosine": models.Distance.COSINE}
_DISTANCE_NAME = {v: k for k, v in _DISTANCE.items()}
LOCK_POINT_ID = 1 << 62  # above every blob chunk id (< 2**60)
LEASE_SECONDS = 60.0
_LEASE_POLL_SECONDS = 0.05
SPACES_TTL_SECONDS = 2.0  # a collection's vector configuration is re-read after this (not on every call)
log = logging.getLogger("amips")


def _chunk_bytes(payload: Any, blob_id: int, index: int, total: int, collection: str) -> bytes:
    """One sidecar chunk's bytes, after checking that its payload is what write_blob stored."""
    payload = payload or {}
    data = payload.get("data")
    if (payload.get("blob") != blob_id or payload.get("index") != index or payload.get("total") != total
            or not isinstance(data, str) or len(data) > 4 * (CHUNK_BYTES // 3 + 1)):
        raise ArtifactError(f"model blob {blob_id} of {collection!r} is malformed (chunk {index} of {total})")
    try:
        return base64.b64decode(data, validate=True)
    except (ValueError, TypeError):
        raise ArtifactError(
            f"model blob {blob_id} of {collection!r} is malformed (chunk {index}: bad base64)") from None


def _client_quantization(name: str) -> Any:
    """qdrant-client's configuration of a quantization named in adapters/storage.py (None for "none")."""
    kind = storage.quantization(name).kind
    if kind == "scalar":
        return models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, quantile=storage.SCALAR_QUANTILE, always_ram=True))
    if kind == "turbo":
        return models.TurboQuantization(turbo=models.TurboQuantQuantizationConfig(
            bits=models.TurboQuantBitSize(f"bits{name.removeprefix('turbo')}"), always_ram=True))
    if kind == "binary":
        encoding = (models.BinaryQuantizationEncoding.TWO_BITS if name == "bq2"
                    else models.BinaryQuantizationEncoding.ONE_BIT)
        return models.BinaryQuantization(binary=models.BinaryQuantizationConfig(
            encoding=encoding, query_encoding=models.BinaryQuantizationQueryEncoding.SCALAR8BITS, always_ram=True))
    if kind == "product":
        return models.ProductQuantization(product=models.ProductQuantizationConfig(
            compression=models.CompressionRatio(f"x{name.removeprefix('pq')}"), always_ram=True))
    return None


class _GuardedClient:
    """The client's methods, run under `lock` (local mode) and with server failures as StoreError (`secrets`
    masked in its message: the API key, the URL's user-info)."""

    def __init__(self, client: QdrantClient, lock: threading.RLock | None,
                 secrets: tuple[str | None, ...] = ()) -> None:
        self._client, self._lock, self._secrets = client, lock, secrets

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
                    raise StoreError(redact(f"the Qdrant server failed: {' '.join(str(exc).split())}",
                                            self._secrets)) from None
                except (OSError, sqlite3.Error) as exc:  # local mode's own files: a full disk, permissions
                    if self._lock is None:
                        raise
                    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    raise StoreError(f"the local store failed: {detail}") from None

        return call


def _remote_client(url: str, api_key: str | None, timeout: int) -> QdrantClient:
    """A client for the server at `url`. InputError when the URL does not parse: the parser's own message
    quotes pieces of it, a password with '/', '?', '#' or '@' in it among them, so it is not passed on."""
    try:
        return QdrantClient(url=url, api_key=api_key, timeout=timeout)
    except ValueError:  # urllib3's LocationParseError
        raise InputError(f"cannot open store {redact(url, [userinfo(url)])!r}: not a valid URL (a user name or "
                         "password must percent-encode '/', '?', '#', '@' and spaces)") from None


class QdrantClientStore(VectorStore):
    def __init__(self, location: str, api_key: str | None = None, timeout: int = 30, attempts: int = 3,
                 backoff: float = 0.5, shared: bool | None = None) -> None:
        """`shared`: whether other processes may write this store's manifests (default: only for a URL),
        which selects the leased lock point over an in-process lock."""
        remote = location.startswith(("http://", "https://"))
        self._api_key = api_key
        if location == ":memory:":
            client = QdrantClient(":memory:")
        elif remote:
            client = _remote_client(location, api_key, timeout)
        else:
            client = QdrantClient(path=location)
        self._attach(client, location, remote, shared)
        self._folder = None if remote or location == ":memory:" else Path(location)
        if remote:
            self._wait_for_server(attempts, backoff)

    @classmethod
    def wrap(cls, client: QdrantClient, shared: bool | None = None) -> "QdrantClientStore":
        """A store over an application's own QdrantClient (local mode or remote), which stays the
        application's: closing the store does not close it."""
        store = cls.__new__(cls)
        remote = not isinstance(getattr(client, "_client", None), QdrantLocal)
        location = getattr(getattr(client, "_client", None), "location", None) or ("server" if remote else "local")
        store._attach(client, str(location), remote, shared)
        store._owns_client = False
        store._folder = None
        return store

    def _attach(self, client: QdrantClient, location: str, remote: bool, shared: bool | None) -> None:
        self._secrets = (getattr(self, "_api_key", None), userinfo(location))
        self.location = redact(location, self._secrets)  # what messages show: never the URL's credentials
        self.shared = remote if shared is None else shared
        self.searches_exactly = not remote  # local mode ignores hnsw_ef and the quantization knobs
        self.client: Any = _GuardedClient(client, None if remote else threading.RLock(), self._secrets)
        self._owns_client = True
        self._spaces: dict[str, tuple[float, VectorSpaces]] = {}
        self._described: dict[str, tuple[float, Any]] = {}  # collection -> (when, get_collection's answer)
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}  # (collection, vector) -> (when, points)
        self._writing: set[str] = set()  # collections whose manifest lock this object holds: reads are fresh

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
        raise StoreError(redact(f"cannot reach Qdrant at {self.location} after {attempts} attempts: {last}",
                                self._secrets))

    # collections -----------------------------------------------------------------------------
    def collections(self) -> list[str]:
        names = [c.name for c in self.client.get_collections().collections]
        return sorted(n for n in names if not n.endswith(SIDECAR_SUFFIX))

    def _require(self, collection: str) -> None:
        check_collection_name(collection)
        if not self.client.collection_exists(collection):
            raise UnknownCollectionError(f"unknown collection {collection!r} in {self.location}")

    def _collection(self, collection: str, fresh: bool = False) -> Any:
        """get_collection's answer (configuration and metadata: manifests, stamp), kept for SPACES_TTL_SECONDS
        for readers, so that a query costs no round trip beyond its search (issue 24.1). Writers read it
        fresh: `fresh`, and every read while this object holds the collection's manifest lock; this object's
        own metadata writes forget it. Another process's writes are seen within SPACES_TTL_SECONDS."""
        cached = self._described.get(collection)
        now = time.monotonic()
        if (cached is not None and not fresh and collection not in self._writing
                and now - cached[0] < SPACES_TTL_SECONDS):
            return cached[1]
        self._require(collection)
        described = self.client.get_collection(collection)
        self._described[collection] = (now, described)
        return described

    def _metadata(self, collection: str, fresh: bool = False) -> dict[str, Any]:
        return self._collection(collection, fresh).config.metadata or {}

    def _update_metadata(self, collection: str, metadata: dict[str, Any]) -> None:
        self._described.pop(collection, None)
        self.client.update_collection(collection, metadata=metadata)
        self._described.pop(collection, None)

    def vector_spaces(self, collection: str) -> VectorSpaces:
        """Kept for SPACES_TTL_SECONDS: every store call resolves the vector it uses, and on a server each
        read costs two round trips, which a batch of queries would otherwise pay several times over."""
        cached = self._spaces.get(collection)
        if cached is not None and time.monotonic() - cached[0] < SPACES_TTL_SECONDS:
            return cached[1]
        spaces = self._read_spaces(collection)
        self._spaces[collection] = (time.monotonic(), spaces)
        return spaces

    def _read_spaces(self, collection: str) -> VectorSpaces:
        config = self._collection(collection).config.params
        vectors = config.vectors
        named = {UNNAMED: vectors} if isinstance(vectors, models.VectorParams) else dict(vectors or {})
        return classify_vectors({name: (params.size, _DISTANCE_NAME.get(params.distance), params.distance,
                                        params.multivector_config is not None) for name, params in named.items()},
                                config.sparse_vectors or {})

    def storage(self, collection: str, using: str | None = None) -> tuple[str, bool] | None:
        if not self.shared:  # local mode searches exactly and does not keep the quantization config
            return None
        name = self.resolve_vector(collection, using)[0]
        config = self._collection(collection).config
        vectors = config.params.vectors
        params = vectors if isinstance(vectors, models.VectorParams) else (vectors or {}).get(name)
        quantization = (params.quantization_config if params is not None else None) or config.quantization_config
        datatype = params.datatype.value if params is not None and params.datatype is not None else None
        return (storage.name_of(quantization.model_dump(mode="json") if quantization is not None else None, datatype),
                bool(params is not None and params.on_disk))

    def exact_scan_reason(self, collection: str, using: str | None = None) -> str | None:
        """Local mode scans always; a server scans a collection none of whose points is HNSW-indexed yet (it
        indexes a segment above the optimizer's indexing_threshold, 10 MB of vectors by default)."""
        if self.searches_exactly:
            return super().exact_scan_reason(collection, using)
        described = self.client.get_collection(collection)
        if described.points_count and not described.indexed_vectors_count:
            return (f"Qdrant holds no HNSW index for {collection!r} (0 of its {described.points_count:,} points "
                    "indexed: it indexes a segment only above the optimizer's indexing_threshold, 10 MB of vectors "
                    "by default), so it scores every vector")
        return None

    def change_storage(self, collection: str, quantization: str, on_disk: bool = False, using: str | None = None,
                       progress: Callable[[int], None] | None = None) -> str:
        """A server rebuilds a collection's quantized copies itself (`update_collection` with the new
        quantization and on_disk); the points are not rewritten. Local mode keeps no quantization: InputError."""
        if not self.shared:
            raise InputError(f"{self.location} is qdrant-client's local mode, which searches exactly and keeps no "
                             "quantization: there is no storage to change")
        storage.quantization(quantization)
        name = self.resolve_vector(collection, using)[0]
        before = self.storage(collection, using)
        was = before[0] if before else None
        if quantization != was and "float16" in (quantization, was):
            raise InputError(f"a server cannot change the datatype of {collection!r}'s vectors in place (float16 is "
                             "the stored vectors' own precision, not a quantized copy): create a new collection with "
                             "--quantization float16 and ingest into it")
        config = _client_quantization(quantization) or models.Disabled.DISABLED
        self.client.update_collection(collection, vectors_config={name: models.VectorParamsDiff(
            on_disk=on_disk, quantization_config=config)})
        self._described.pop(collection, None)
        return (f"{collection!r}: the server now stores vector {name or '(unnamed)'} as "
                f"{storage.label(quantization, on_disk)} (was {storage.label(*before) if before else 'unknown'}); "
                "it rebuilds the quantized copies in the background")

    def info(self, collection: str, using: str | None = None) -> CollectionInfo:
        """The point count is kept for SPACES_TTL_SECONDS (an exact count on every query made amips 5–10×
        slower than plain search through qdrant-client); this object's own writes forget it."""
        name, dim, distance = self.resolve_vector(collection, using)
        cached, now = self._counts.get((collection, name)), time.monotonic()
        if cached is None or now - cached[0] >= SPACES_TTL_SECONDS:
            cached = (now, self.client.count(collection, count_filter=self._holds(name), exact=True).count)
            self._counts[(collection, name)] = cached
        return CollectionInfo(collection, dim, distance, cached[1], name)

    @staticmethod
    def _holds(vector: str) -> models.Filter | None:
        return None if not vector else models.Filter(must=[models.HasVectorCondition(has_vector=vector)])

    def create(self, collection: str, dim: int, distance: str, shards: int | None = None,
               replication_factor: int | None = None, quantization: str = "none",
               using: str | None = None, on_disk: bool = False) -> None:
        check_collection_name(collection)
        config = _client_quantization(quantization)
        self._spaces.pop(collection, None)
        self._described.pop(collection, None)
        self._counts = {key: value for key, value in self._counts.items() if key[0] != collection}
        params = models.VectorParams(size=dim, distance=_DISTANCE[distance], on_disk=on_disk or None,
                                     datatype=models.Datatype.FLOAT16 if quantization == "float16" else None)
        self.client.create_collection(collection, vectors_config={using: params} if using else params,
                                      shard_number=shards, replication_factor=replication_factor,
                                      quantization_config=config,
                                      metadata={STAMP_KEY: WriteStamp.new().as_manifest()})

    def upsert(self, collection: str, ids: np.ndarray, vectors: np.ndarray,
               payloads: Sequence[dict[str, Any] | None] | None = None, using: str | None = None) -> None:
        name = self.resolve_vector(collection, using)[0]
        qdrant_ids = point_ids.to_qdrant_list(ids)
        self.bump_generation(collection)
        self._counts = {key: value for key, value in self._counts.items() if key[0] != collection}
        for start in range(0, len(ids), UPSERT_BATCH):
            stop = start + UPSERT_BATCH
            rows = vectors[start:stop].tolist()
            batch = models.Batch(ids=qdrant_ids[start:stop], vectors={name: rows} if name else rows,
                                 payloads=[p or {} for p in payloads[start:stop]] if payloads else None)
            self.client.upsert(collection, points=batch, wait=True)

    def existing(self, collection: str, ids: np.ndarray) -> np.ndarray:
        self._require(collection)
        found: list[Any] = []
        qdrant_ids = point_ids.to_qdrant_list(ids)
        for start in range(0, len(qdrant_ids), UPSERT_BATCH):
            found += [r.id for r in self.client.retrieve(collection, qdrant_ids[start:start + UPSERT_BATCH],
                                                         with_payload=False, with_vectors=False)]
        return point_ids.common([point_ids.as_id_array(found), ids])[0]

    def all_ids(self, collection: str, batch_size: int) -> Iterator[np.ndarray]:
        self._require(collection)
        for records in pages(lambda offset: self.client.scroll(collection, limit=batch_size, offset=offset,
                                                                 with_vectors=False, with_payload=False)):
            yield point_ids.as_id_array([r.id for r in records])

    def scroll(self, collection: str, batch_size: int,
               using: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        name = self.resolve_vector(collection, using)[0]
        for records in pages(lambda offset: self.client.scroll(collection, scroll_filter=self._holds(name),
                                                                 limit=batch_size, offset=offset,
                                                                 with_vectors=[name] if name else True,
                                                                 with_payload=False)):
            yield records_as_arrays(records, name)

    # search ----------------------------------------------------------------------------------
    def _params(self, params: SearchParams) -> models.SearchParams | None:
        """The engine's search params; none in local mode, which searches exactly and warns of any it is given."""
        return None if self.searches_exactly else engine_search_params(params, models)

    def _run(self, collection: str, requests: list[models.QueryRequest], limit: int) -> SearchResult:
        """One call for the batch; a single query as `query_points`, the call plain search makes (qdrant-client's
        `query_batch_points` copies every request first: 0.1 ms a query in local mode)."""
        if len(requests) == 1:
            request = requests[0]
            points = self.client.query_points(collection, query=request.query, using=request.using,
                                              prefetch=request.prefetch, query_filter=request.filter,
                                              search_params=request.params, limit=request.limit, with_payload=False,
                                              with_vectors=False).points
            return collect_results([points], limit)
        responses = self.client.query_batch_points(collection, requests=requests)
        return collect_results([response.points for response in responses], limit)

    def search(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams,
               using: str | None = None) -> SearchResult:
        name = self.resolve_vector(collection, using)[0] or None
        search_params = self._params(params)
        requests = [models.QueryRequest(query=q, using=name, limit=limit, params=search_params, filter=params.filter,
                                        with_payload=False, with_vector=False) for q in queries.tolist()]
        return self._run(collection, requests, limit)

    def search_prefetched(self, collection: str, queries: np.ndarray, prefetch: list[np.ndarray],
                          candidates: int, limit: int, params: SearchParams, using: str | None = None) -> SearchResult:
        name = self.resolve_vector(collection, using)[0] or None
        requests = [
            models.QueryRequest(
                prefetch=[models.Prefetch(query=p[row].tolist(), using=name, limit=candidates,
                                          params=self._params(params), filter=params.filter)
                          for p in prefetch],
                query=queries[row].tolist(), using=name, limit=limit, params=self._params(params.rescoring()),
                filter=params.filter, with_payload=False, with_vector=False)
            for row in range(len(queries))
        ]
        return self._run(collection, requests, limit)

    # what rides along --------------------------------------------------------------------------
    def retrieve(self, collection: str, ids: np.ndarray, using: str | None = None) -> np.ndarray:
        name = self.resolve_vector(collection, using)[0]
        wanted = point_ids.to_qdrant_list(ids)
        found = self.client.retrieve(collection, wanted, with_payload=False, with_vectors=[name] if name else True)
        return vectors_in_order(collection, wanted, {point_ids.canonical(r.id): vector_of(r, name) for r in found})

    def records(self, collection: str, ids: np.ndarray, with_payload: Any = True,
                with_vectors: Any = False) -> dict[int | str, tuple[Any, Any]]:
        self._require(collection)
        found = self.client.retrieve(collection, point_ids.to_qdrant_list(ids), with_payload=with_payload,
                                     with_vectors=with_vectors)
        return {point_ids.canonical(r.id): (r.payload, r.vector) for r in found}

    def read_manifest(self, collection: str, slot: str = "model") -> ManifestSchema | None:
        metadata = self._metadata(collection)
        slot = self.manifest_slot(collection, slot)
        return validate_manifest(metadata.get(self._metadata_key(slot)), slot, collection)

    def manifest_token(self, collection: str, slot: str = "model") -> Hashable | None:
        """When the collection's description (metadata: every manifest) was read: it changes with every read
        (each SPACES_TTL_SECONDS, and after this object's own writes), so what a reader derived from a
        manifest is re-derived at most that often. None while this object writes the collection."""
        if collection in self._writing:
            return None
        self._collection(collection)
        return self._described[collection][0]

    def write_manifest(self, collection: str, manifest: dict[str, Any] | None, slot: str = "model") -> None:
        self._require(collection)
        self._update_metadata(collection, {self._metadata_key(self.manifest_slot(collection, slot)): manifest})

    def last_version(self, collection: str, slot: str = "model") -> int:
        value = self._metadata(collection).get(self._metadata_key(self.manifest_slot(collection, slot)) + "#removed")
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_VERSION else 0

    def remember_version(self, collection: str, slot: str, version: int) -> None:
        key = self._metadata_key(self.manifest_slot(collection, slot)) + "#removed"
        self._update_metadata(collection, {key: int(version)})

    def write_stamp(self, collection: str, create: bool = False) -> WriteStamp | None:
        """The stamp in the collection's metadata ("amips_stamp"), read on every call (other clients of
        a server may write it); a collection without one gets one when `create`."""
        stamp = WriteStamp.parse(self._metadata(collection, fresh=create).get(STAMP_KEY))
        if stamp is None and create:
            stamp = WriteStamp.new()
            self._update_metadata(collection, {STAMP_KEY: stamp.as_manifest()})
        return stamp

    def bump_generation(self, collection: str) -> None:
        """Read, add one, write back: two writers racing may add one between them, which still leaves
        every artifact built before either stale (the generation differs from the one it recorded)."""
        bumped = (self.write_stamp(collection, create=True) or WriteStamp.new()).bumped()
        self._update_metadata(collection, {STAMP_KEY: bumped.as_manifest()})

    def free_bytes(self) -> int | None:
        """Local mode on disk: the free space of its folder's disk (SQLite and its journal write there)."""
        if self._folder is None:
            return None
        try:
            return shutil.disk_usage(self._folder).free
        except OSError:
            return None

    def read_pending_write(self, collection: str) -> dict[str, Any] | None:
        return self._metadata(collection, fresh=True).get(PENDING_WRITE_KEY)

    def write_pending_write(self, collection: str, record: dict[str, Any] | None) -> None:
        self._require(collection)
        self._update_metadata(collection, {PENDING_WRITE_KEY: record})

    @staticmethod
    def _metadata_key(slot: str) -> str:
        """"amips" (or amips_pq, amips_router); for a named vector "amips@<name>"."""
        base, vector = split_slot(slot)
        return f"{METADATA_KEYS[base]}@{vector}" if vector else METADATA_KEYS[base]

    def _sidecar(self, collection: str) -> str:
        return collection + SIDECAR_SUFFIX

    def _owned_sidecar(self, collection: str) -> str | None:
        """The sidecar's name if it exists and belongs to amips's `collection`, None if it does not exist;
        StoreError for a foreign collection of that name, which amips never reads or writes.

        Ours: its metadata carries {SIDECAR_MARKER: collection}. A sidecar from before the marker (no
        metadata, no vectors: how amips always created it) is adopted by writing the marker; any other
        collection there is foreign.
        """
        sidecar = self._sidecar(collection)
        if not self.client.collection_exists(sidecar):
            return None
        config = self.client.get_collection(sidecar).config
        owner = (config.metadata or {}).get(SIDECAR_MARKER)
        if owner == collection:
            return sidecar
        if owner is None and not config.metadata and not config.params.vectors:
            self.client.update_collection(sidecar, metadata={SIDECAR_MARKER: collection})
            return sidecar
        raise StoreError(f"collection {sidecar!r} exists but is not amips's sidecar of {collection!r}; amips will not "
                         f"touch it (rename it, or store {collection!r}'s model elsewhere)")

    def _ensure_sidecar(self, collection: str) -> str:
        self._require(collection)
        sidecar = self._owned_sidecar(collection)
        if sidecar is None:
            sidecar = self._sidecar(collection)
            try:
                self.client.create_collection(sidecar, vectors_config={}, metadata={SIDECAR_MARKER: collection})
            except Exception:
                if self._owned_sidecar(collection) is None:  # not another writer creating it first
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

    def read_blob(self, collection: str, blob_id: int, max_bytes: int = MAX_BLOB_BYTES) -> bytes:
        """The blob's chunks, each payload checked (types, index, total, base64) and the total bounded by
        `max_bytes` before the chunks are fetched."""
        sidecar = self._owned_sidecar(collection)
        blob_id = int(blob_id)
        first = self.client.retrieve(sidecar, [blob_id << _CHUNK_ID_BITS]) if sidecar else []
        if not first:
            raise ArtifactError(f"model blob {blob_id} of {collection!r} is missing from the store")
        max_chunks = max(1, -(-min(max_bytes, MAX_BLOB_BYTES) // CHUNK_BYTES))
        total = (first[0].payload or {}).get("total")
        if type(total) is not int or not 1 <= total <= max_chunks:
            raise ArtifactError(f"model blob {blob_id} of {collection!r} is malformed (chunk count {str(total)[:40]}, "
                                f"expected 1..{max_chunks})")
        ids = [(blob_id << _CHUNK_ID_BITS) | i for i in range(total)]
        records = {int(r.id): r for r in self.client.retrieve(sidecar, ids)}
        if len(records) != total:
            raise ArtifactError(f"model blob {blob_id} of {collection!r} is incomplete "
                                f"({len(records)} of {total} chunks)")
        parts = [_chunk_bytes(records[point_id].payload, blob_id, index, total, collection)
                 for index, point_id in enumerate(ids)]
        blob = b"".join(parts)
        if len(blob) > max_bytes:
            raise ArtifactError(f"model blob {blob_id} of {collection!r} is {len(blob):,} bytes, over the "
                                f"{max_bytes:,} expected")
        return blob

    def delete_blob(self, collection: str, blob_id: int | None) -> None:
        sidecar = self._owned_sidecar(collection)
        if sidecar is None:
            return
        if blob_id is None:
            self.client.delete_collection(sidecar)
            return
        chunks = models.Filter(must=[models.FieldCondition(key="blob", match=models.MatchValue(value=blob_id))])
        self.client.delete(sidecar, points_selector=models.FilterSelector(filter=chunks), wait=True)

    # the manifest lock ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def manifest_lock(self, collection: str) -> Iterator[None]:
        with super().manifest_lock(collection), self._fresh_reads(collection):  # the threads of this process
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

    @contextlib.contextmanager
    def _fresh_reads(self, collection: str) -> Iterator[None]:
        """While held: every read of the collection's metadata goes to the store (a writer's compare-and-swap)."""
        self._writing.add(collection)
        try:
            yield
        finally:
            self._writing.discard(collection)

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
        if self._owns_client:
            self.client.close()
