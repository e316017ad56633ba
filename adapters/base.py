"""The one small interface every backend implements (docs/design.md §3–4).

A store holds named collections of dense vectors with Qdrant point ids (integers or UUIDs, as
arrays: `point_ids`), answers batched nearest-
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
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import numpy as np

from amips_plugin.core.errors import InputError, StoreBusyError, StoreError
from amips_plugin.core.limits import MAX_BLOB_BYTES

from amips_plugin.core import point_ids
from amips_plugin.core.manifest_schema import SLOTS, ManifestSchema
from . import storage

DISTANCES = ("dot", "cosine")
MANIFEST_SLOTS = tuple(SLOTS)  # "model", "pq", "router", "policy" (core/manifest_schema.py: one entry each)
MANIFEST_LOCK_TIMEOUT = 30.0  # seconds a writer waits for another writer's commit before giving up
_LOCKS_GUARD = threading.Lock()
STAMP_ID = re.compile(r"^[0-9a-f]{32}$")
WRITE_RESERVE_BYTES = 16 << 20  # kept free by every write: room for the engine's write-ahead log and metadata
WRITE_AMPLIFICATION = 4  # disk bytes per vector byte written: the log, the segment, the index, the optimizer's copy


UNNAMED = ""  # Qdrant's name for a collection's single unnamed vector


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    distance: str  # "dot" or "cosine"
    count: int  # points that hold this vector
    vector: str = UNNAMED  # the dense vector described (and searched)


def vector_slot(slot: str, vector: str) -> str:
    """The manifest slot of `slot` ("model", "pq", ...) for one vector: `slot` for the unnamed vector,
    `slot@name` for a named one, so each vector of a collection has its own model and side indexes."""
    return f"{slot}@{vector}" if vector else slot


def split_slot(slot: str) -> tuple[str, str]:
    """(base slot, vector name) of a slot from `vector_slot`; KeyError for an unknown base slot."""
    base, _, vector = slot.partition("@")
    if base not in MANIFEST_SLOTS:
        raise KeyError(f"unknown manifest slot {slot!r}")
    return base, vector


@dataclass(frozen=True)
class WriteStamp:
    """Which points a collection holds, in two numbers cheap enough to check on every query.

    `collection`: a random id made when the collection is created (or when amips first binds an artifact
    to a collection made elsewhere), so a re-created collection, or a manifest copied from another
    collection, never matches. `generation`: bumped before every amips write to the points, so a build
    that read the keys before a write, or an artifact published before one, never matches either.
    Every artifact kept alongside a collection records the stamp of the points it was built on
    (`bound_to`); it is fresh only while the collection's stamp is still that one (amips_plugin/freshness.py)."""

    collection: str
    generation: int

    def as_manifest(self) -> dict[str, Any]:
        return {"collection": self.collection, "generation": self.generation}

    @classmethod
    def parse(cls, value: Any) -> "WriteStamp | None":
        """A stored stamp, or None for anything that is not one (stored state is untrusted)."""
        if not isinstance(value, dict):
            return None
        collection, generation = value.get("collection"), value.get("generation")
        if (not isinstance(collection, str) or not STAMP_ID.fullmatch(collection) or type(generation) is not int
                or not 0 <= generation < 2**62):
            return None
        return cls(collection, generation)

    @classmethod
    def new(cls) -> "WriteStamp":
        return cls(secrets.token_hex(16), 0)

    def bumped(self) -> "WriteStamp":
        return WriteStamp(self.collection, self.generation + 1)


@dataclass(frozen=True)
class StoredFile:
    """A file kept alongside a collection that may be a leftover: a blob (`blob`: its id) or the
    temporary file of an interrupted write (`blob` None); `age`: seconds since it was last written."""

    name: str
    bytes: int
    age: float
    blob: int | None = None


@dataclass(frozen=True)
class SearchParams:
    """Engine knobs passed through to every search: HNSW beam width, exact (brute-force) scoring,
    for a scalar-quantized collection the oversampling of its int8 search (oversampling × limit
    candidates, rescored with the original vectors; None: the engine's default), and a payload
    filter (a `qdrant_client.models.Filter`) applied to every prefetch and to the final query."""

    hnsw_ef: int | None = None
    exact: bool = False
    oversampling: float | None = None
    filter: Any = None
    ignore_quantization: bool = False  # score with the original vectors even where int8 copies exist

    def rescoring(self) -> "SearchParams":
        """The knobs of a prefetch query's outer stage: score its candidates exactly, with the original
        vectors. Left to the engine's defaults, Qdrant Edge answers that stage as an HNSW search filtered
        to the candidates' ids, which can miss candidates and return short rows (issue 22.1)."""
        return SearchParams(exact=True, filter=self.filter, ignore_quantization=True)


@dataclass(frozen=True)
class SearchResult:
    """Per query, the returned ids and their scores, best first. Ids are int64 (−1 pads short rows)
    or, in a collection with UUID ids, canonical text ("" pads); see `point_ids`. `versions`: each
    point's version as the engine reported it with the hit (Qdrant's `ScoredPoint.version`), or None
    where a result was scored outside the engine (amips' own candidate sources)."""

    ids: np.ndarray  # (M, k) int64 or <U36
    scores: np.ndarray  # (M, k) float32
    versions: np.ndarray | None = None  # (M, k) int64, 0 in padding

    @classmethod
    def empty(cls, rows: int, limit: int, text: bool = False) -> "SearchResult":
        """All rows padded: ids −1 (or ""), scores −inf, versions 0."""
        return cls(point_ids.padded((rows, limit), text), np.full((rows, limit), -np.inf, dtype=np.float32),
                   np.zeros((rows, limit), dtype=np.int64))

    def assign(self, rows: Any, part: "SearchResult") -> "SearchResult":
        """This result with `rows` replaced by `part` (switching to text ids when `part` has them); versions
        are kept only while every part has them."""
        ids, part_ids = point_ids.common([self.ids, part.ids])
        ids[rows], self.scores[rows] = part_ids, part.scores
        versions = None
        if self.versions is not None and part.versions is not None:
            versions = self.versions
            versions[rows] = part.versions
        return SearchResult(ids, self.scores, versions)

    def head(self, limit: int) -> "SearchResult":
        """The first `limit` hits of each row."""
        versions = None if self.versions is None else self.versions[:, :limit]
        return SearchResult(self.ids[:, :limit], self.scores[:, :limit], versions)


def pages(fetch: Callable[[Any], tuple[Sequence[Any], Any]]) -> Iterator[Sequence[Any]]:
    """Every non-empty page of a scroll, `fetch(offset)` returning (records, next offset or None), from None."""
    offset = None
    while True:
        records, offset = fetch(offset)
        if records:
            yield records
        if offset is None:
            return


def engine_search_params(params: SearchParams, api: Any) -> Any:
    """`params` as the engine's SearchParams, built from `api` — `qdrant_edge` or `qdrant_client.models`, whose
    SearchParams and QuantizationSearchParams take the same fields: rescoring from the originals whenever an
    oversampling is given, the quantized copies passed over when `ignore_quantization`."""
    quantization = None
    if params.ignore_quantization:
        quantization = api.QuantizationSearchParams(ignore=True)
    elif params.oversampling is not None:
        quantization = api.QuantizationSearchParams(ignore=False, rescore=True, oversampling=params.oversampling)
    return api.SearchParams(hnsw_ef=params.hnsw_ef, exact=params.exact, quantization=quantization)


def collect_results(responses: Sequence[Sequence[Any]], limit: int) -> SearchResult:
    """Scored points (anything with .id, .score and .version), one list per query, as padded arrays."""
    flat = responses[0][:limit] if len(responses) == 1 else [point for points in responses for point in points[:limit]]
    ids = point_ids.as_id_array([point.id for point in flat], unsigned=True)
    scores = np.array([point.score for point in flat], dtype=np.float32)
    versions = [point.version for point in flat]
    try:
        version_array = np.array(versions, dtype=np.int64)
    except TypeError:  # a store that leaves some version unset
        version_array = np.array([version or 0 for version in versions], dtype=np.int64)
    if len(flat) == len(responses) * limit:  # the common case: every row full, nothing to pad
        shape = (len(responses), limit)
        return SearchResult(ids.reshape(shape), scores.reshape(shape), version_array.reshape(shape))
    result = SearchResult.empty(len(responses), limit, text=point_ids.is_text(ids))
    counts = np.array([min(len(points), limit) for points in responses], dtype=np.int64)
    filled = np.arange(limit) < counts[:, None]
    result.ids[filled] = ids  # a boolean mask fills row by row, in the order of `flat`
    result.scores[filled] = scores
    assert result.versions is not None
    result.versions[filled] = version_array
    return result


VectorSpaces = tuple[dict[str, tuple[int, str]], dict[str, str]]


def classify_vectors(dense: dict[str, tuple[int, str | None, Any, bool]], sparse: Iterable[str]) -> VectorSpaces:
    """Split a collection's vectors into those amips serves, {name: (dim, "dot" | "cosine")}, and the
    others, {name: why not}. `dense`: name → (size, amips's distance name or None, the engine's own
    distance, whether it is a multivector)."""
    servable: dict[str, tuple[int, str]] = {}
    unsupported = {name: "a sparse vector" for name in sparse}
    for name, (size, distance, engine_distance, multivector) in dense.items():
        if multivector:
            unsupported[name] = "a multivector"
        elif distance is None:
            unsupported[name] = f"distance {engine_distance} (amips serves Dot and Cosine)"
        else:
            servable[name] = (int(size), distance)
    return servable, unsupported


def vector_of(record: Any, vector: str) -> Any:
    """A record's vector `vector` (records of named vectors carry a {name: vector} dict)."""
    return record.vector[vector] if isinstance(record.vector, dict) else record.vector


def records_as_arrays(records: Sequence[Any], vector: str = UNNAMED) -> tuple[np.ndarray, np.ndarray]:
    """Scrolled records (anything with .id and .vector) as (ids, vectors) arrays."""
    return (point_ids.as_id_array([r.id for r in records]),
            np.array([vector_of(r, vector) for r in records], dtype=np.float32))


def vectors_in_order(collection: str, wanted: Sequence[Any], found: dict[Any, Any]) -> np.ndarray:
    """Retrieved vectors (by canonical id) in the order of `wanted`; InputError naming missing ids."""
    missing = [i for i in wanted if i not in found]
    if missing:
        raise InputError(f"{len(missing)} ids not in {collection!r}, e.g. {missing[:3]}")
    return np.array([found[i] for i in wanted], dtype=np.float32).reshape(len(wanted), -1)


class PointStore(abc.ABC):
    """The points half of a backend: collections, their vectors and payloads, search, and the write stamp
    that tells an artifact whether the points it was built on are still these. Vectors are float32 (n, d);
    ids are arrays of Qdrant point ids (`core.point_ids`)."""

    location: str
    searches_exactly: bool = False  # brute force whatever the knobs say (qdrant-client's local mode)

    # collections -----------------------------------------------------------------------------
    @abc.abstractmethod
    def collections(self) -> list[str]:
        """Names of the user's collections (sidecars and internal files excluded)."""

    @abc.abstractmethod
    def vector_spaces(self, collection: str) -> VectorSpaces:
        """({name: (dim, distance)} of the dense vectors amips can serve ("" is the unnamed one),
        {name: why amips cannot serve it} for the others: sparse, multivector, other distances)."""

    def resolve_vector(self, collection: str, using: str | None) -> tuple[str, int, str]:
        """(name, dim, distance) of the vector `using` names, or of the collection's only servable one."""
        servable, unsupported = self.vector_spaces(collection)
        if using is None:
            if len(servable) == 1:
                name, (dim, distance) = next(iter(servable.items()))
                return name, dim, distance
            if not servable:
                why = "; ".join(f"{n!r}: {r}" for n, r in unsupported.items()) or "no vectors"
                raise InputError(f"collection {collection!r} has no dense vector amips can serve ({why})")
            raise InputError(f"collection {collection!r} has several vectors ({', '.join(sorted(servable))}); "
                             "choose one with --using (using= in Python)")
        if using in servable:
            return (using, *servable[using])
        if using in unsupported:
            raise InputError(f"vector {using!r} of {collection!r} cannot be served by amips: {unsupported[using]}")
        raise InputError(f"collection {collection!r} has no vector {using!r} "
                         f"(it has {', '.join(repr(n) for n in [*servable, *unsupported]) or 'none'})")

    def manifest_slot(self, collection: str, slot: str) -> str:
        """A slot as stored: one already naming its vector ("model@text") as it is; a bare one ("model")
        for the collection's only dense vector, so a model trained without `using` on a collection whose
        one vector is named "text" is the same as one trained with using="text"."""
        return slot if "@" in slot else vector_slot(slot, self.resolve_vector(collection, None)[0])

    def exact_scan_reason(self, collection: str, using: str | None = None) -> str | None:
        """Why the engine answers every search of a vector (`using`, default the only one) by scoring all of
        it, whatever hnsw_ef says (so that knob is not worth tuning); None when it searches an HNSW index."""
        if self.searches_exactly:
            return f"{self.location} searches exactly (brute force: qdrant-client's local mode)"
        return None

    def quantized(self, collection: str, using: str | None = None) -> bool | None:
        """Whether the vector keeps quantized copies that searches use (so `oversampling` means something);
        None where the store cannot tell or ignores quantization anyway (qdrant-client's local mode)."""
        stored = self.storage(collection, using)
        return None if stored is None else stored[0] not in storage.ORIGINALS_ONLY

    @abc.abstractmethod
    def info(self, collection: str, using: str | None = None) -> CollectionInfo:
        """Dimension, distance and point count of a vector (`using`, default the only one);
        UnknownCollectionError when the collection is absent, InputError for an unusable vector."""

    @abc.abstractmethod
    def create(self, collection: str, dim: int, distance: str, shards: int | None = None,
               replication_factor: int | None = None, quantization: str = "none",
               using: str | None = None, on_disk: bool = False) -> None:
        """Create an empty collection with one dense vector (unnamed, or named `using`); shards and
        replication apply to servers and clusters only. `quantization` (adapters/storage.py: int8, turbo4,
        turbo2, turbo1, bq2, bq1) keeps compressed copies of the vectors in RAM that HNSW searches,
        rescoring its candidates with the originals, which `on_disk` keeps on disk."""

    def storage(self, collection: str, using: str | None = None) -> tuple[str, bool] | None:
        """(quantization name as in adapters/storage.py, or "other"; originals on disk) of a vector, or None
        where the store cannot tell (qdrant-client's local mode keeps no quantization)."""
        return None

    def change_storage(self, collection: str, quantization: str, on_disk: bool = False, using: str | None = None,
                       progress: Callable[[int], None] | None = None) -> str:
        """Store the vector `using` as `quantization` (adapters/storage.py) and `on_disk`, keeping every point,
        id and payload; what was done, in words. `progress` is called with each batch's point count where the
        points are copied. InputError where the store has no storage to change."""
        raise InputError(f"{self.location} keeps no quantization: there is no storage to change")

    @abc.abstractmethod
    def upsert(self, collection: str, ids: np.ndarray, vectors: np.ndarray,
               payloads: Sequence[dict[str, Any] | None] | None = None, using: str | None = None) -> None:
        """Insert or overwrite points (with a payload each, when given)."""

    @abc.abstractmethod
    def existing(self, collection: str, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` the collection already holds (a subset of `ids`, same representation)."""

    @abc.abstractmethod
    def all_ids(self, collection: str, batch_size: int) -> Iterator[np.ndarray]:
        """Every point id, in batches (no vectors read)."""

    @abc.abstractmethod
    def scroll(self, collection: str, batch_size: int,
               using: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every point that holds the vector, as (ids, vectors) batches in the store's id order."""

    def finish_bulk_load(self, collection: str) -> None:
        """Build indexes after a bulk load (Edge: HNSW); a no-op where the engine does it itself."""

    # search ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def search(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams,
               using: str | None = None) -> SearchResult:
        """Plain top-`limit` by the collection's distance, one row per query."""

    @abc.abstractmethod
    def search_prefetched(self, collection: str, queries: np.ndarray, prefetch: list[np.ndarray],
                          candidates: int, limit: int, params: SearchParams, using: str | None = None) -> SearchResult:
        """Prefetch `candidates` points with each vector set in `prefetch` (each (M, d)), then rescore
        the union by `queries` and return the top `limit`: the Query API's prefetch + outer query."""

    # what rides along with a collection ----------------------------------------------------------
    @abc.abstractmethod
    def retrieve(self, collection: str, ids: np.ndarray, using: str | None = None) -> np.ndarray:
        """The vectors of `ids`, in that order (for exact rescoring); InputError for unknown ids."""

    @abc.abstractmethod
    def records(self, collection: str, ids: np.ndarray, with_payload: Any = True,
                with_vectors: Any = False) -> dict[int | str, tuple[Any, Any]]:
        """{canonical id: (payload, vector)} for the `ids` that exist, as qdrant-client's `with_payload` /
        `with_vectors` ask (True, False, or a list of payload keys / vector names)."""

    def write_stamp(self, collection: str, create: bool = False) -> WriteStamp | None:
        """The collection's `WriteStamp`; None when it has none yet (made by another client, or before
        stamps) unless `create`, which gives it one. Writers create it; the query path only reads it."""
        return None

    def bump_generation(self, collection: str) -> None:
        """Advance the collection's write generation; every store writing points calls it first, so an
        interrupted write still leaves every artifact built before it stale."""

    def free_bytes(self) -> int | None:
        """Free space on the disk holding this store's files; None for a store that keeps none here (a server,
        ":memory:")."""
        return None

    def check_room(self, what: str, nbytes: int) -> None:
        """StoreError unless the disk holds room for writing `nbytes` of vectors (`what` says what): a full
        disk fails an engine part-way through a write (Qdrant Edge: a bus error), so writes check first."""
        free, needed = self.free_bytes(), WRITE_AMPLIFICATION * nbytes + WRITE_RESERVE_BYTES
        if free is not None and free < needed:
            raise StoreError(f"not enough disk space to write {what}: about {needed / 2**20:,.0f} MiB needed in "
                             f"{self.location}, {free / 2**20:,.0f} MiB free — free some space and run it again")

    def read_pending_write(self, collection: str) -> dict[str, Any] | None:
        """The record of a write to the points that started and has not finished (`pending_writes`), or None.
        Stored state: whatever is there, unvalidated (the caller parses it)."""
        return None

    def write_pending_write(self, collection: str, record: dict[str, Any] | None) -> None:
        """Keep (None: remove) the record of a write to the points before it starts; a store may not keep it."""


class ArtifactStore(abc.ABC):
    """The artifacts half of a backend: what amips keeps alongside a collection — manifests (one per slot,
    core/manifest_schema.SLOTS), blobs, the manifest lock, versions — all of it untrusted when read back."""

    location: str
    manifest_lock_timeout: float = MANIFEST_LOCK_TIMEOUT

    @abc.abstractmethod
    def read_manifest(self, collection: str, slot: str = "model") -> ManifestSchema | None:
        """The manifest in `slot` ("model"; "pq": the compressed key store; "router": the routed lists;
        "policy": the tuned serving policy, a manifest without a blob; each `vector_slot`-suffixed for a
        named vector), validated and typed by its slot's schema (core/manifest_schema.SLOTS), or None."""

    @abc.abstractmethod
    def write_manifest(self, collection: str, manifest: dict[str, Any] | None, slot: str = "model") -> None:
        """Replace the manifest in `slot` atomically (None removes it)."""

    def manifest_token(self, collection: str, slot: str = "model") -> Hashable | None:
        """A value, cheap to get, that changes whenever the manifest in `slot` does — so a caller may keep
        what it derived from the manifest while the token stays the same — or None where this store cannot
        tell without reading the manifest (then nothing is kept)."""
        return None

    def last_version(self, collection: str, slot: str = "model") -> int:
        """The version of the slot's last removed manifest (0: none kept), so that versions keep rising
        after a drop. Stored state: anything unreadable counts as 0."""
        return 0

    def remember_version(self, collection: str, slot: str, version: int) -> None:
        """Keep `version` as the slot's last removed manifest's (`last_version`); a store may not keep it."""

    @abc.abstractmethod
    def write_blob(self, collection: str, blob_id: int, data: bytes) -> None:
        """Store blob `blob_id` (< 2**40) completely before returning; readers never see part of it."""

    @abc.abstractmethod
    def read_blob(self, collection: str, blob_id: int, max_bytes: int = MAX_BLOB_BYTES) -> bytes:
        """The blob stored under `blob_id`; ArtifactError when it is missing, incomplete, malformed or
        larger than `max_bytes` (decided before it is read: stored state is untrusted input)."""

    @abc.abstractmethod
    def delete_blob(self, collection: str, blob_id: int | None) -> None:
        """Remove one blob (None: every blob of the collection); a missing blob is not an error."""

    def stored_files(self, collection: str) -> list[StoredFile]:
        """Every blob and every interrupted write's temporary file alongside the collection, among which
        `model_registry.leftovers` finds those no reader will open; [] where the store cannot list its
        files by age (only Edge can: its blobs are files)."""
        return []

    def named_blobs(self, collection: str) -> set[int] | None:
        """The blob ids that the manifests alongside the collection name (every slot, every vector); None
        when one cannot be read, as it might name any blob, or where the store cannot tell."""
        return None

    def remove_stored_file(self, collection: str, stored: StoredFile) -> None:
        """Remove a file `stored_files` listed; one already gone is not an error."""
        raise NotImplementedError(f"{self.location} lists no stored files")

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


class VectorStore(PointStore, ArtifactStore):
    """A backend: both halves over one collection namespace (Qdrant Edge, qdrant-client local or server)."""

    location: str

    def close(self) -> None:
        """Release files and connections."""
