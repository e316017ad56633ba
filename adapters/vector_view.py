"""One named vector of a store's collections, seen as a store of its own.

A Qdrant collection may hold several named vectors ("text", "image", ...), each with its own keys,
so each gets its own model and side indexes. `VectorView(store, "text")` is a VectorStore whose every
vector call is the store's with `using="text"` and whose manifests live in the `vector_slot`-suffixed
slots ("model@text", ...). Everything above the store layer (training, the registry, the query path,
side indexes) then works on a named vector unchanged. Blobs, ids, payloads and the manifest lock are
the collection's, shared by its vectors.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np

from amips_plugin.core.limits import MAX_BLOB_BYTES
from amips_plugin.core.manifest_schema import ManifestSchema

from .base import CollectionInfo, SearchParams, SearchResult, StoredFile, VectorStore, WriteStamp, vector_slot


class VectorView(VectorStore):
    def __init__(self, store: VectorStore, using: str) -> None:
        self.store, self.using = store, using
        self.searches_exactly = store.searches_exactly
        self.location = f"{store.location} (vector {using!r})"

    def collections(self) -> list[str]:
        return self.store.collections()

    def vector_spaces(self, collection: str) -> tuple[dict[str, tuple[int, str]], dict[str, str]]:
        return self.store.vector_spaces(collection)

    def quantized(self, collection: str, using: str | None = None) -> bool | None:
        return self.store.quantized(collection, self.using)

    def storage(self, collection: str, using: str | None = None) -> tuple[str, bool] | None:
        return self.store.storage(collection, self.using)

    def change_storage(self, collection: str, quantization: str, on_disk: bool = False, using: str | None = None,
                       progress: Callable[[int], None] | None = None) -> str:
        return self.store.change_storage(collection, quantization, on_disk, self.using, progress)

    def info(self, collection: str, using: str | None = None) -> CollectionInfo:
        return self.store.info(collection, self.using)

    def create(self, collection: str, dim: int, distance: str, shards: int | None = None,
               replication_factor: int | None = None, quantization: str = "none",
               using: str | None = None, on_disk: bool = False) -> None:
        self.store.create(collection, dim, distance, shards, replication_factor, quantization, self.using, on_disk)

    def upsert(self, collection: str, ids: np.ndarray, vectors: np.ndarray,
               payloads: Sequence[dict[str, Any] | None] | None = None, using: str | None = None) -> None:
        self.store.upsert(collection, ids, vectors, payloads, self.using)

    def existing(self, collection: str, ids: np.ndarray) -> np.ndarray:
        return self.store.existing(collection, ids)

    def all_ids(self, collection: str, batch_size: int) -> Iterator[np.ndarray]:
        return self.store.all_ids(collection, batch_size)

    def scroll(self, collection: str, batch_size: int,
               using: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.store.scroll(collection, batch_size, self.using)

    def finish_bulk_load(self, collection: str) -> None:
        self.store.finish_bulk_load(collection)

    def search(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams,
               using: str | None = None) -> SearchResult:
        return self.store.search(collection, queries, limit, params, self.using)

    def search_prefetched(self, collection: str, queries: np.ndarray, prefetch: list[np.ndarray],
                          candidates: int, limit: int, params: SearchParams, using: str | None = None) -> SearchResult:
        return self.store.search_prefetched(collection, queries, prefetch, candidates, limit, params, self.using)

    def retrieve(self, collection: str, ids: np.ndarray, using: str | None = None) -> np.ndarray:
        return self.store.retrieve(collection, ids, self.using)

    def records(self, collection: str, ids: np.ndarray, with_payload: Any = True,
                with_vectors: Any = False) -> dict[int | str, tuple[Any, Any]]:
        return self.store.records(collection, ids, with_payload, with_vectors)

    def read_manifest(self, collection: str, slot: str = "model") -> ManifestSchema | None:
        return self.store.read_manifest(collection, vector_slot(slot, self.using))

    def manifest_token(self, collection: str, slot: str = "model") -> Hashable | None:
        return self.store.manifest_token(collection, vector_slot(slot, self.using))

    def free_bytes(self) -> int | None:
        return self.store.free_bytes()

    def exact_scan_reason(self, collection: str, using: str | None = None) -> str | None:
        return self.store.exact_scan_reason(collection, self.using)

    def write_manifest(self, collection: str, manifest: dict[str, Any] | None, slot: str = "model") -> None:
        self.store.write_manifest(collection, manifest, vector_slot(slot, self.using))

    def last_version(self, collection: str, slot: str = "model") -> int:
        return self.store.last_version(collection, vector_slot(slot, self.using))

    def remember_version(self, collection: str, slot: str, version: int) -> None:
        self.store.remember_version(collection, vector_slot(slot, self.using), version)

    def write_stamp(self, collection: str, create: bool = False) -> WriteStamp | None:
        return self.store.write_stamp(collection, create)

    def bump_generation(self, collection: str) -> None:
        self.store.bump_generation(collection)

    def read_pending_write(self, collection: str) -> dict[str, Any] | None:
        return self.store.read_pending_write(collection)

    def write_pending_write(self, collection: str, record: dict[str, Any] | None) -> None:
        self.store.write_pending_write(collection, record)

    def write_blob(self, collection: str, blob_id: int, data: bytes) -> None:
        self.store.write_blob(collection, blob_id, data)

    def read_blob(self, collection: str, blob_id: int, max_bytes: int = MAX_BLOB_BYTES) -> bytes:
        return self.store.read_blob(collection, blob_id, max_bytes)

    def delete_blob(self, collection: str, blob_id: int | None) -> None:
        self.store.delete_blob(collection, blob_id)

    def stored_files(self, collection: str) -> list[StoredFile]:
        return self.store.stored_files(collection)

    def named_blobs(self, collection: str) -> set[int] | None:
        return self.store.named_blobs(collection)

    def remove_stored_file(self, collection: str, stored: StoredFile) -> None:
        self.store.remove_stored_file(collection, stored)

    @contextlib.contextmanager
    def manifest_lock(self, collection: str) -> Iterator[None]:
        with self.store.manifest_lock(collection):
            yield

    def close(self) -> None:
        self.store.close()


def for_vector(store: VectorStore, using: str | None) -> VectorStore:
    """The store itself for the default vector (None), else a view of the named one."""
    return store if not using else VectorView(store, using)
