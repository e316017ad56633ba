"""Qdrant Edge (qdrant-edge-py): the Qdrant engine in-process, real HNSW; the embedded default.

Layout under the store's root directory, one folder per collection:

    <root>/<collection>/shard/          the Edge shard (segments, WAL, edge_config.json)
    <root>/<collection>/amips/          the model next to it: manifest.json (pq.json: the compressed
                                        key store), blob-<id>.amips

HNSW is built and used for every collection size (`indexing_threshold` and `full_scan_threshold`
are set to a few KB; the engine's defaults would brute-force anything under ~10 MB). The WAL
stays on: it is what makes a second process opening the same shard fail instead of silently
diverging. Manifest and blobs are written to a temporary file and renamed into place; a file
system error there (disk full, permissions) is a StoreError. Writers of the manifests take an
exclusive flock on `<collection>/amips/.manifest.lock`, so the registry's read-check-write of a
manifest is a compare-and-swap even between processes (the shard's own lock already keeps a second
process out; the flock does not depend on that).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import qdrant_edge as edge

from amips_plugin.errors import ArtifactError, InputError, StoreBusyError, StoreError, UnknownCollectionError
from amips_plugin.files import atomic_write

from .base import (SCALAR_QUANTILE, CollectionInfo, SearchParams, SearchResult, VectorStore, collect_results,
                   records_as_arrays)

HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
FULL_SCAN_THRESHOLD_KB = 1
INDEXING_THRESHOLD_KB = 1
UPSERT_BATCH = 1024
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_DISTANCE = {"dot": edge.Distance.Dot, "cosine": edge.Distance.Cosine}
_DISTANCE_NAME = {"Dot": "dot", "Cosine": "cosine"}
_MANIFEST_FILES = {"model": "manifest.json", "pq": "pq.json", "router": "router.json", "policy": "policy.json"}
_LOCK_FILE = ".manifest.lock"
_LOCK_POLL_SECONDS = 0.01


@contextlib.contextmanager
def _file_errors(what: str) -> Iterator[None]:
    """OSError (disk full, read-only or missing folder, permissions) as one StoreError line."""
    try:
        yield
    except OSError as exc:
        raise StoreError(f"cannot {what}: {exc.strerror or exc}") from None


class EdgeStore(VectorStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = f"edge:{self.root}"
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, edge.EdgeShard] = {}

    def _folder(self, collection: str) -> Path:
        if not _NAME.match(collection):
            raise UnknownCollectionError(f"invalid collection name {collection!r} (letters, digits, _ . - only)")
        return self.root / collection

    def _config(self, dim: int, distance: str, scalar_quantization: bool) -> edge.EdgeConfig:
        quantization = edge.ScalarQuantizationConfig(
            type=edge.ScalarType.Int8, quantile=SCALAR_QUANTILE, always_ram=True) if scalar_quantization else None
        return edge.EdgeConfig(
            vectors=edge.EdgeVectorParams(size=dim, distance=_DISTANCE[distance], quantization_config=quantization),
            hnsw_config=edge.HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT,
                                             full_scan_threshold=FULL_SCAN_THRESHOLD_KB),
            optimizers=edge.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB),
        )

    def _shard(self, collection: str) -> edge.EdgeShard:
        if collection in self._shards:
            return self._shards[collection]
        shard_dir = self._folder(collection) / "shard"
        if not (shard_dir / "edge_config.json").is_file():
            raise UnknownCollectionError(f"unknown collection {collection!r} in {self.location}")
        try:
            shard = edge.EdgeShard.load(str(shard_dir))
        except Exception as exc:  # the engine raises plain Exception, e.g. the WAL lock
            raise StoreError(f"cannot open collection {collection!r} ({exc}); is another process using {self.root}?") from None
        self._shards[collection] = shard
        return shard

    # collections -----------------------------------------------------------------------------
    def collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "shard" / "edge_config.json").is_file())

    def info(self, collection: str) -> CollectionInfo:
        shard = self._shard(collection)
        config = json.loads((self._folder(collection) / "shard" / "edge_config.json").read_text())
        vector = config["vectors"][""]
        count = shard.count(edge.CountRequest())
        return CollectionInfo(collection, int(vector["size"]), _DISTANCE_NAME.get(vector["distance"], vector["distance"]), count)

    def create(self, collection: str, dim: int, distance: str, shards: int | None = None,
               replication_factor: int | None = None, scalar_quantization: bool = False) -> None:
        shard_dir = self._folder(collection) / "shard"
        shard_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._shards[collection] = edge.EdgeShard.create(str(shard_dir), self._config(dim, distance, scalar_quantization))
        except Exception as exc:
            raise StoreError(f"cannot create collection {collection!r}: {exc}") from None

    def upsert(self, collection: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        shard = self._shard(collection)
        for start in range(0, len(ids), UPSERT_BATCH):
            points = [edge.Point(int(i), v, None) for i, v in zip(ids[start:start + UPSERT_BATCH],
                                                                  vectors[start:start + UPSERT_BATCH])]
            shard.update(edge.UpdateOperation.upsert_points(points))
        shard.flush()

    def finish_bulk_load(self, collection: str) -> None:
        shard = self._shard(collection)
        shard.optimize()
        shard.flush()

    def scroll(self, collection: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        shard = self._shard(collection)
        offset = None
        while True:
            records, offset = shard.scroll(edge.ScrollRequest(offset=offset, limit=batch_size, with_vector=True,
                                                              with_payload=False))
            if records:
                yield records_as_arrays(records)
            if offset is None:
                return

    # search ----------------------------------------------------------------------------------
    @staticmethod
    def _params(params: SearchParams) -> edge.SearchParams:
        quantization = None if params.oversampling is None else edge.QuantizationSearchParams(
            ignore=False, rescore=True, oversampling=params.oversampling)
        return edge.SearchParams(hnsw_ef=params.hnsw_ef, exact=params.exact, quantization=quantization)

    def _run(self, collection: str, requests: list[edge.QueryRequest], limit: int) -> SearchResult:
        return collect_results(self._shard(collection).query_batch(edge.QueryBatchRequest(requests)), limit)

    def search(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams) -> SearchResult:
        requests = [edge.QueryRequest(limit=limit, query=edge.Query.Nearest(q), params=self._params(params),
                                      with_payload=False, with_vector=False) for q in queries]
        return self._run(collection, requests, limit)

    def search_prefetched(self, collection: str, queries: np.ndarray, prefetch: list[np.ndarray],
                          candidates: int, limit: int, params: SearchParams) -> SearchResult:
        requests = [
            edge.QueryRequest(
                limit=limit,
                prefetches=[edge.Prefetch(limit=candidates, query=edge.Query.Nearest(p[row]), params=self._params(params))
                            for p in prefetch],
                query=edge.Query.Nearest(queries[row]), params=self._params(params),
                with_payload=False, with_vector=False)
            for row in range(len(queries))
        ]
        return self._run(collection, requests, limit)

    # what rides along --------------------------------------------------------------------------
    def _model_dir(self, collection: str) -> Path:
        self._shard(collection)  # the collection must exist
        return self._folder(collection) / "amips"

    def retrieve(self, collection: str, ids: np.ndarray) -> np.ndarray:
        records = {int(r.id): r.vector for r in self._shard(collection).retrieve([int(i) for i in ids], None, True)}
        missing = [int(i) for i in ids if int(i) not in records]
        if missing:
            raise InputError(f"{len(missing)} ids not in {collection!r}, e.g. {missing[:3]}")
        return np.array([records[int(i)] for i in ids], dtype=np.float32).reshape(len(ids), -1)

    def read_manifest(self, collection: str, slot: str = "model") -> dict[str, Any] | None:
        path = self._model_dir(collection) / _MANIFEST_FILES[slot]
        with _file_errors(f"read the manifest of {collection!r}"):
            if not path.is_file():
                return None
            text = path.read_text()
        try:
            return json.loads(text) or None
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"model manifest of {collection!r} is not valid JSON ({exc}); "
                                "remove it with `amips drop-model`") from None

    def write_manifest(self, collection: str, manifest: dict[str, Any] | None, slot: str = "model") -> None:
        path = self._model_dir(collection) / _MANIFEST_FILES[slot]
        with _file_errors(f"write the manifest of {collection!r}"):
            if manifest is None:
                path.unlink(missing_ok=True)
                return
            atomic_write(path, json.dumps(manifest, sort_keys=True).encode("utf-8"))

    def write_blob(self, collection: str, blob_id: int, data: bytes) -> None:
        with _file_errors(f"write model blob {blob_id} of {collection!r}"):
            atomic_write(self._model_dir(collection) / f"blob-{blob_id}.amips", data)

    def read_blob(self, collection: str, blob_id: int) -> bytes:
        path = self._model_dir(collection) / f"blob-{blob_id}.amips"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"model blob {blob_id} of {collection!r} is missing from the store") from None
        except OSError as exc:
            raise StoreError(f"cannot read model blob {blob_id} of {collection!r}: {exc.strerror or exc}") from None

    def delete_blob(self, collection: str, blob_id: int | None) -> None:
        pattern = "blob-*.amips" if blob_id is None else f"blob-{blob_id}.amips"
        with _file_errors(f"delete model blobs of {collection!r}"):
            for path in self._model_dir(collection).glob(pattern):
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def manifest_lock(self, collection: str) -> Iterator[None]:
        """An exclusive flock on `<collection>/amips/.manifest.lock`, polled until the timeout.

        flock locks belong to an open file description, so this excludes other processes and other
        threads of this one alike; the kernel drops it when its holder dies.
        """
        folder, timeout = self._model_dir(collection), self.manifest_lock_timeout
        with _file_errors(f"open the manifest lock of {collection!r}"):
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreBusyError(f"another writer kept the manifest lock of {collection!r} "
                                             f"for over {timeout:g}s") from None
                    time.sleep(_LOCK_POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # releases the flock

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
