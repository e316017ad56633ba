"""The one small interface every backend implements (DESIGN.md §3–4).

A store holds named collections of dense vectors with integer ids, answers batched nearest-
neighbour queries (plain, or with prefetch candidates rescored by the original query), and keeps
two things for the model that rides along with each collection: a JSON manifest (the collection's
metadata) and binary blobs under integer ids (the model artifact). `amips_plugin.model_registry` builds
the publish protocol (blob first, manifest last, old versions removed after) on these primitives.

`manifest_lock` serialises the writers of one collection's manifests, so that the registry's
read-check-write of a manifest is a compare-and-swap. The default here is a lock per store object
(threads sharing it); a backend whose manifests other processes can write overrides it (Edge: an
flock on a file next to the manifests; a Qdrant server: a leased lock point).
"""
from __future__ import annotations

import abc
import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from amips_plugin.errors import StoreBusyError

DISTANCES = ("dot", "cosine")
MANIFEST_SLOTS = ("model", "pq", "router", "policy")
SCALAR_QUANTILE = 0.99  # int8 scalar quantization clips each vector coordinate to this quantile
MANIFEST_LOCK_TIMEOUT = 30.0  # seconds a writer waits for another writer's commit before giving up
_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    distance: str  # "dot" or "cosine"
    count: int


@dataclass(frozen=True)
class SearchParams:
    """Engine knobs passed through to every search: HNSW beam width, exact (brute-force) scoring,
    and for a scalar-quantized collection the oversampling of its int8 search (oversampling × limit
    candidates, rescored with the original vectors; None: the engine's default)."""

    hnsw_ef: int | None = None
    exact: bool = False
    oversampling: float | None = None


@dataclass(frozen=True)
class SearchResult:
    """Per query, the returned ids (−1 pads short rows) and their scores, best first."""

    ids: np.ndarray  # (M, k) int64
    scores: np.ndarray  # (M, k) float32

    @classmethod
    def empty(cls, rows: int, limit: int) -> "SearchResult":
        """All rows padded: ids −1, scores −inf."""
        return cls(np.full((rows, limit), -1, dtype=np.int64), np.full((rows, limit), -np.inf, dtype=np.float32))


def collect_results(responses: Sequence[Sequence[Any]], limit: int) -> SearchResult:
    """Scored points (anything with .id and .score), one list per query, as padded arrays."""
    result = SearchResult.empty(len(responses), limit)
    for row, points in enumerate(responses):
        for col, point in enumerate(points[:limit]):
            result.ids[row, col], result.scores[row, col] = int(point.id), point.score
    return result


def records_as_arrays(records: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Scrolled records (anything with .id and .vector) as (ids, vectors) arrays."""
    return (np.array([r.id for r in records], dtype=np.int64),
            np.array([r.vector for r in records], dtype=np.float32))


class VectorStore(abc.ABC):
    """A backend. Vectors are float32 (n, d); ids are non-negative int64."""

    location: str
    manifest_lock_timeout: float = MANIFEST_LOCK_TIMEOUT

    # collections -----------------------------------------------------------------------------
    @abc.abstractmethod
    def collections(self) -> list[str]:
        """Names of the user's collections (sidecars and internal files excluded)."""

    @abc.abstractmethod
    def info(self, collection: str) -> CollectionInfo:
        """Dimension, distance and point count; UnknownCollectionError when absent."""

    @abc.abstractmethod
    def create(self, collection: str, dim: int, distance: str, shards: int | None = None,
               replication_factor: int | None = None, scalar_quantization: bool = False) -> None:
        """Create an empty collection; shards and replication apply to servers and clusters only.
        `scalar_quantization` keeps an int8 copy of the vectors (quantile 0.99, in RAM) that HNSW
        searches, rescoring its candidates with the originals."""

    @abc.abstractmethod
    def upsert(self, collection: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or overwrite points."""

    @abc.abstractmethod
    def scroll(self, collection: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every point, as (ids, vectors) batches in ascending id order."""

    def finish_bulk_load(self, collection: str) -> None:
        """Build indexes after a bulk load (Edge: HNSW); a no-op where the engine does it itself."""

    # search ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def search(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams) -> SearchResult:
        """Plain top-`limit` by the collection's distance, one row per query."""

    @abc.abstractmethod
    def search_prefetched(self, collection: str, queries: np.ndarray, prefetch: list[np.ndarray],
                          candidates: int, limit: int, params: SearchParams) -> SearchResult:
        """Prefetch `candidates` points with each vector set in `prefetch` (each (M, d)), then rescore
        the union by `queries` and return the top `limit`: the Query API's prefetch + outer query."""

    # what rides along with a collection ----------------------------------------------------------
    @abc.abstractmethod
    def retrieve(self, collection: str, ids: np.ndarray) -> np.ndarray:
        """The vectors of `ids`, in that order (for exact rescoring); InputError for unknown ids."""

    @abc.abstractmethod
    def read_manifest(self, collection: str, slot: str = "model") -> dict[str, Any] | None:
        """The manifest in `slot` ("model"; "pq": the compressed key store; "router": the routed lists;
        "policy": the tuned serving policy, a manifest without a blob), or None."""

    @abc.abstractmethod
    def write_manifest(self, collection: str, manifest: dict[str, Any] | None, slot: str = "model") -> None:
        """Replace the manifest in `slot` atomically (None removes it)."""

    @abc.abstractmethod
    def write_blob(self, collection: str, blob_id: int, data: bytes) -> None:
        """Store blob `blob_id` (< 2**40) completely before returning; readers never see part of it."""

    @abc.abstractmethod
    def read_blob(self, collection: str, blob_id: int) -> bytes:
        """The blob stored under `blob_id`; ArtifactError when it is missing or incomplete."""

    @abc.abstractmethod
    def delete_blob(self, collection: str, blob_id: int | None) -> None:
        """Remove one blob (None: every blob of the collection); a missing blob is not an error."""

    @contextlib.contextmanager
    def manifest_lock(self, collection: str) -> Iterator[None]:
        """Hold the exclusive right to write `collection`'s manifests (every slot) for the block.

        StoreBusyError when another writer keeps it longer than `manifest_lock_timeout` seconds. This
        default covers writers sharing this store object; backends shared between processes override it.
        """
        timeout = self.manifest_lock_timeout
        with _LOCKS_GUARD:
            locks = self.__dict__.setdefault("_manifest_locks", {})
            lock = locks.setdefault(collection, threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise StoreBusyError(f"another writer kept the manifest lock of {collection!r} for over {timeout:g}s")
        try:
            yield
        finally:
            lock.release()

    def close(self) -> None:
        """Release files and connections."""
