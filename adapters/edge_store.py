"""Qdrant Edge (qdrant-edge-py): the Qdrant engine in-process, real HNSW; the embedded default.

Layout under the store's root directory, one folder per collection:

    <root>/<collection>/shard/          the Edge shard (segments, WAL, edge_config.json), and beside the
                                        engine's files amips-stamp.json (the write stamp: adapters.base.WriteStamp)
                                        and amips-pending-write.json (an append under way: pending_writes)
    <root>/<collection>/amips/          the model next to it: manifest.json (pq.json: the compressed
                                        key store), blob-<id>.amips

HNSW is built and used for every collection size (`indexing_threshold` and `full_scan_threshold`
are set to a few KB; the engine's defaults would brute-force anything under ~10 MB). The WAL
stays on: it is what makes a second process opening the same shard fail instead of silently
diverging. Manifest and blobs are written to a temporary file and renamed into place; a file
system error there (disk full, permissions) is a StoreError. Writers of the manifests take an
exclusive lock (portalocker; flock on POSIX) on `<collection>/amips/.manifest.lock`, so the
registry's read-check-write of a manifest is a compare-and-swap even between processes (the shard's
own lock already keeps a second process out; the flock does not depend on that).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
import time
from pathlib import Path
from urllib.parse import quote, unquote
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np
import portalocker
import qdrant_edge as edge

from amips_plugin.core.errors import (AmipsError, ArtifactError, InputError, StoreBusyError, StoreError,
                                      UnknownCollectionError)
from amips_plugin.core.files import atomic_write, interrupted_write_target, read_bounded
from amips_plugin.core.limits import MAX_BLOB_BYTES, MAX_MANIFEST_BYTES, MAX_VERSION
from amips_plugin.core.manifest_schema import (SLOTS, BlobManifestSchema, ManifestError, ManifestSchema, fix_command,
                                               parse_manifest_json)

from amips_plugin.core import point_ids
from .edge_filters import edge_filter
from .edge_integrity import damaged_vector_files
from . import edge_storage_change as storage_change
from . import storage
from .base import (CollectionInfo, SearchParams, SearchResult, StoredFile, VectorStore, WriteStamp,
                   collect_results, engine_search_params, pages,
                   UNNAMED, VectorSpaces, classify_vectors, records_as_arrays, split_slot, vector_of,
                   vectors_in_order)
from .names import check_collection_name

HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
FULL_SCAN_THRESHOLD_KB = 1
INDEXING_THRESHOLD_KB = 1
DEFAULT_INDEXING_THRESHOLD_KB = 10_000  # Qdrant's, where a shard's configuration names none
UPSERT_BATCH = 1024
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_DISTANCE = {"dot": edge.Distance.Dot, "cosine": edge.Distance.Cosine}
_DISTANCE_NAME = {"Dot": "dot", "Cosine": "cosine"}
_MANIFEST_FILES = {name: slot.file_name for name, slot in SLOTS.items()}
_MANIFEST_STEMS = {name.removesuffix(".json"): slot for slot, name in _MANIFEST_FILES.items()}
_MANIFEST_FILE = re.compile(rf"^(?P<stem>{'|'.join(map(re.escape, _MANIFEST_STEMS))})(?:@(?P<vector>[^/]*))?\.json$")
_BLOB_FILE = re.compile(r"^blob-(?P<id>0|[1-9][0-9]*)\.amips$")
_ARTIFACT_FILE = re.compile(r"^(blob-[0-9]+\.amips|(manifest|pq|router|policy)(@[^/]*)?\.(json|removed))$")
_LOCK_FILE = ".manifest.lock"
_STAMP_FILE = "amips-stamp.json"
OPEN_RESERVE_BYTES = 16 << 20
_PENDING_FILE = "amips-pending-write.json"
log = logging.getLogger("amips")
_LOCK_POLL_SECONDS = 0.01


def _engine_vectors(queries: np.ndarray) -> list[Any]:  # memoryviews; the stubs name only list[float]
    """Each row of (M, d) queries as the engine's dense vector: a float32 memoryview, which the engine reads
    as it reads a list of floats (the same f32 values, integration_tests/test_edge_store_vectors.py) without the M × d
    Python floats of `tolist()` — 7.5 µs of the ~16 a query took to hand a 384-d query over."""
    rows = np.ascontiguousarray(queries, dtype=np.float32)
    return [memoryview(row) for row in rows]


def _edge_quantization(name: str) -> Any:
    """The engine's configuration of a quantization named in adapters/storage.py (None for "none")."""
    kind = storage.quantization(name).kind
    if kind == "scalar":
        return edge.ScalarQuantizationConfig(type=edge.ScalarType.Int8, quantile=storage.SCALAR_QUANTILE,
                                             always_ram=True)
    if kind == "turbo":
        bits = {"turbo4": edge.TurboQuantBitSize.Bits4, "turbo2": edge.TurboQuantBitSize.Bits2,
                "turbo1": edge.TurboQuantBitSize.Bits1}[name]
        return edge.TurboQuantQuantizationConfig(bits=bits, always_ram=True)
    if kind == "binary":
        encoding = edge.BinaryQuantizationEncoding.TwoBits if name == "bq2" else edge.BinaryQuantizationEncoding.OneBit
        return edge.BinaryQuantizationConfig(encoding=encoding, always_ram=True,
                                             query_encoding=edge.BinaryQuantizationQueryEncoding.Scalar8Bits)
    if kind == "product":
        ratio = {"pq8": edge.CompressionRatio.X8, "pq16": edge.CompressionRatio.X16,
                 "pq32": edge.CompressionRatio.X32}[name]
        return edge.ProductQuantizationConfig(compression=ratio, always_ram=True)
    return None


@contextlib.contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """An engine failure (it raises plain Exception: disk full, I/O errors) as one StoreError line."""
    try:
        yield
    except Exception as exc:
        detail = " ".join(str(exc).replace("Service runtime error: ", "").split())[:300] or type(exc).__name__
        raise StoreError(f"cannot {what}: {detail}") from None


@contextlib.contextmanager
def _file_errors(what: str) -> Iterator[None]:
    """OSError (disk full, read-only or missing folder, permissions) as one StoreError line."""
    try:
        yield
    except OSError as exc:
        raise StoreError(f"cannot {what}: {exc.strerror or exc}") from None


def _own_folder(folder: Path) -> Path:
    """`folder` when it is absent or a real folder; StoreError naming it when it is a symbolic link (which
    would take every read, write and delete of amips's files out of the collection's folder) or a file."""
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        return folder
    except OSError as exc:
        raise StoreError(f"cannot inspect {folder}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(mode):
        raise StoreError(f"{folder} is a symbolic link; amips keeps a collection's model files only in a real "
                         "folder there (remove the link)")
    if not stat.S_ISDIR(mode):
        raise StoreError(f"{folder} is not a folder; amips keeps a collection's model files there (move it away)")
    return folder


def _may_be_leftover(name: str) -> bool:
    """Named like a blob, or like the temporary file of an interrupted write of any of amips's files."""
    target = interrupted_write_target(name)
    return bool(_BLOB_FILE.fullmatch(name) or (target and _ARTIFACT_FILE.fullmatch(target)))


def _open_lock_file(path: Path) -> int:
    """The lock file, created if absent and never written, opened without following a symbolic link (one
    planted there would make every writer create or lock its target, anywhere); StoreError naming it when
    it is a link or not a regular file. Opened for writing: flock over NFS needs it for an exclusive lock."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link; amips will not follow it (remove it)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{path} is not a regular file (remove it)")
    return fd


def _lock(fd: int, collection: str, timeout: float) -> None:
    """flock `fd` exclusively, trying every _LOCK_POLL_SECONDS; StoreBusyError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            portalocker.lock(fd, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
            return
        except portalocker.AlreadyLocked:
            if time.monotonic() >= deadline:
                raise StoreBusyError(f"another writer kept the manifest lock of {collection!r} "
                                     f"for over {timeout:g}s") from None
            time.sleep(_LOCK_POLL_SECONDS)
        except portalocker.LockException as exc:
            raise StoreError(f"cannot take the manifest lock of {collection!r}: {exc}") from None


class EdgeStore(VectorStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = f"edge:{self.root}"
        self._shards: dict[str, edge.EdgeShard] = {}
        self._configs: dict[str, dict[str, Any]] = {}  # collection -> its shard's edge_config.json
        self._spaces: dict[str, VectorSpaces] = {}
        self._infos: dict[tuple[str, str | None], CollectionInfo] = {}  # (collection, using) -> it, its count included
        self._manifest_writes = 0  # by this store object: part of every manifest token
        self._manifest_paths: dict[tuple[str, str], Path] = {}
        self._stamps: dict[str, WriteStamp | None] = {}  # the shard is this process's alone: only we change them

    def _folder(self, collection: str) -> Path:
        check_collection_name(collection)
        if not _NAME.fullmatch(collection):
            raise InputError(f"invalid collection name {collection[:80]!r} (letters, digits, _ . - only)")
        return self.root / collection

    def _config(self, dim: int, distance: str, quantization: str, vector: str,
                on_disk: bool = False) -> edge.EdgeConfig:
        params = edge.EdgeVectorParams(size=dim, distance=_DISTANCE[distance], on_disk=on_disk or None,
                                       quantization_config=_edge_quantization(quantization),
                                       datatype=(edge.VectorStorageDatatype.Float16 if quantization == "float16"
                                                 else None))
        return edge.EdgeConfig(
            vectors={vector: params} if vector else params,
            hnsw_config=edge.HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT,
                                             full_scan_threshold=FULL_SCAN_THRESHOLD_KB),
            optimizers=edge.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB),
        )

    def _shard(self, collection: str) -> edge.EdgeShard:
        if collection in self._shards:
            return self._shards[collection]
        shard_dir = self._folder(collection) / "shard"
        self._recover_storage_change(collection)
        if not (shard_dir / "edge_config.json").is_file():
            raise UnknownCollectionError(f"unknown collection {collection!r} in {self.location}")
        free = self.free_bytes()
        if free is not None and free < OPEN_RESERVE_BYTES:  # replaying the log into a full disk is a bus error
            raise StoreError(f"cannot open collection {collection!r}: {free / 2**20:,.1f} MiB free on the disk of "
                             f"{self.root}; Qdrant Edge may need up to {OPEN_RESERVE_BYTES >> 20} MiB to open a "
                             "collection (its write-ahead log replays into 32 MiB segments) — free some space")
        damaged = damaged_vector_files(shard_dir)
        if damaged:  # the engine would pad it with zeros and answer from what survived
            raise StoreError(f"collection {collection!r} is damaged: {damaged[0]}"
                             f"{f' (and {len(damaged) - 1} more)' if len(damaged) > 1 else ''}; restore {shard_dir} "
                             "from a backup or ingest the points again")
        try:
            shard = edge.EdgeShard.load(str(shard_dir))
        except Exception as exc:  # the engine raises plain Exception: the WAL lock, a corrupt segment, permissions
            # the WAL's lock, held by another process ("Can't init WAL: Kind(WouldBlock)")
            locked = "WouldBlock" in str(exc)
            hint = f"; is another process using {self.root}?" if locked else ""
            raise StoreError(f"cannot open collection {collection!r} ({exc}){hint}") from None
        self._shards[collection] = shard
        return shard

    # collections -----------------------------------------------------------------------------
    def collections(self) -> list[str]:
        if not self.root.is_dir():  # nothing made yet; the folder is created by the first `create`
            return []
        for folder in self.root.iterdir():
            if _NAME.fullmatch(folder.name) and (folder / storage_change.JOURNAL).exists():
                self._recover_storage_change(folder.name)
        return sorted(p.name for p in self.root.iterdir()
                      if _NAME.fullmatch(p.name) and (p / "shard" / "edge_config.json").is_file())

    def vector_spaces(self, collection: str) -> VectorSpaces:
        if collection not in self._spaces:  # every store call resolves its vector: classified once
            config = self._shard_config(collection)
            self._spaces[collection] = classify_vectors(
                {name: (params["size"], _DISTANCE_NAME.get(params.get("distance")), params.get("distance"),
                        bool(params.get("multivector_config")))
                 for name, params in (config.get("vectors") or {}).items()},
                config.get("sparse_vectors") or {})
        return self._spaces[collection]

    def storage(self, collection: str, using: str | None = None) -> tuple[str, bool]:
        name = self.resolve_vector(collection, using)[0]
        config = self._shard_config(collection)
        vector = (config.get("vectors") or {}).get(name) or {}
        return (storage.name_of(vector.get("quantization_config") or config.get("quantization_config"),
                                vector.get("datatype")),
                bool(vector.get("on_disk")))

    def _shard_config(self, collection: str) -> dict[str, Any]:
        """The shard's edge_config.json, read once: a shard's vectors and quantization are fixed at its creation."""
        self._shard(collection)
        if collection not in self._configs:
            self._configs[collection] = json.loads(
                (self._folder(collection) / "shard" / "edge_config.json").read_text())
        return self._configs[collection]

    def info(self, collection: str, using: str | None = None) -> CollectionInfo:
        """The point count is counted once and then kept: the shard is this process's alone (its WAL
        lock keeps other processes out), so only this store's own writes change it, and `upsert`
        forgets it. (Counting costs ~1.5 ms at 19k points, more than an HNSW search.)"""
        info = self._infos.get((collection, using))
        if info is None:
            name, dim, distance = self.resolve_vector(collection, using)
            holds = None if not name else edge.Filter(must=[edge.HasVectorCondition(name)])
            count = self._shard(collection).count(edge.CountRequest(filter=holds))
            info = self._infos[(collection, using)] = CollectionInfo(collection, dim, distance, count, name)
        return info

    def exact_scan_reason(self, collection: str, using: str | None = None) -> str | None:
        """Qdrant builds a segment's HNSW index only once the segment's vectors outgrow the optimizer's
        indexing_threshold (DEFAULT_INDEXING_THRESHOLD_KB unless configured; 0 turns indexing off) and
        m > 0; until then it scores every vector. A shard made with the defaults for a few thousand
        384-d vectors has no index at all."""
        name, dim, _ = self.resolve_vector(collection, using)
        config = self._shard_config(collection)
        threshold = (config.get("optimizers") or {}).get("indexing_threshold")
        threshold = DEFAULT_INDEXING_THRESHOLD_KB if threshold is None else threshold
        count = self.info(collection, using).count
        what = f"Qdrant holds no HNSW index for {collection!r}{f' [{name}]' if name else ''}"
        if not count:
            return None
        if threshold == 0 or (config.get("hnsw_config") or {}).get("m") == 0:
            return f"{what} (its configuration turns HNSW indexing off), so it scores every vector"
        if count * dim * 4 <= threshold * 1024:
            return (f"{what}: its {count:,} vectors ({count * dim * 4 / 2**20:,.1f} MiB) are below the optimizer's "
                    f"indexing_threshold ({threshold:,} KB), so it scores every vector")
        if not self._shard(collection).info().indexed_vectors_count:
            return f"{what} yet (0 of its {count:,} points indexed), so it scores every vector"
        return None

    def _forget_counts(self, collection: str) -> None:
        for key in [k for k in self._infos if k[0] == collection]:
            del self._infos[key]

    def create(self, collection: str, dim: int, distance: str, shards: int | None = None,
               replication_factor: int | None = None, quantization: str = "none",
               using: str | None = None, on_disk: bool = False) -> None:
        storage.quantization(quantization)  # a known name, before anything is made
        if (shards or 1) > 1 or (replication_factor or 1) > 1:
            raise InputError("an Edge store is one local shard: --shards and --replication-factor apply to a "
                             "Qdrant server or cluster")
        shard_dir = self._folder(collection) / "shard"
        shard_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._shards[collection] = edge.EdgeShard.create(
                str(shard_dir), self._config(dim, distance, quantization, using or UNNAMED, on_disk))
        except Exception as exc:
            raise StoreError(f"cannot create collection {collection!r}: {exc}") from None
        self._write_stamp(collection, WriteStamp.new())
        self._remove_an_earlier_collections_files(collection)

    def _recover_storage_change(self, collection: str) -> None:
        """Complete a storage change a kill interrupted (adapters/edge_storage_change.py), before the shard opens."""
        if collection in self._shards:
            return
        with _file_errors(f"recover the interrupted storage change of {collection!r}"):
            done = storage_change.recover(self._folder(collection))
        if done:
            log.warning("amips: %s: %s", collection, done)

    def change_storage(self, collection: str, quantization: str, on_disk: bool = False, using: str | None = None,
                       progress: Callable[[int], None] | None = None) -> str:
        """A new shard beside the old, checked point by point, swapped in atomically (edge_storage_change)."""
        storage.quantization(quantization)
        name = self.resolve_vector(collection, using)[0]
        before = self.storage(collection, using)
        unindexed = self.exact_scan_reason(collection, using) is not None  # the new shard gets amips' HNSW settings
        if before == (quantization, on_disk) and not unindexed:
            return f"{collection!r} already stores its vectors as {storage.label(quantization, on_disk)}"
        folder = self._folder(collection)
        with self.manifest_lock(collection):
            old = self._shard(collection)
            info = old.info()
            self.check_room(f"a copy of {collection!r} in its new storage",
                            int(info.points_count)
                            * sum(dim for dim, _ in self.vector_spaces(collection)[0].values()) * 4)
            ours = storage_change.quantization_json(lambda: self._config(1, "dot", quantization, ""))
            index = {part: ours[part] for part in ("hnsw_config", "optimizers")} if unindexed else None
            config = storage_change.changed_config(self._shard_config(collection), name, ours["vectors"][""], on_disk,
                                                   index)
            new_dir = folder / storage_change.NEW
            with _file_errors(f"prepare the new storage of {collection!r}"):
                shutil.rmtree(new_dir, ignore_errors=True)
                storage_change.write_journal(folder, "building", quantization, on_disk)
                new_dir.mkdir()
                atomic_write(new_dir / "edge_config.json", json.dumps(config).encode("utf-8"))
            try:
                with _engine_errors(f"copy {collection!r} into its new storage"):
                    new = edge.EdgeShard.load(str(new_dir))
                    try:
                        copied = storage_change.copy_points(old, new, progress or (lambda n: None))
                        new.optimize()
                        new.flush()
                        storage_change.check_copy(old, new, collection, half=quantization == "float16")
                    finally:
                        new.close()
                self.close_collection(collection)
                with _file_errors(f"swap {collection!r} to its new storage"):
                    storage_change.swap(folder, quantization, on_disk)
            except BaseException:
                self.close_collection(collection)
                with _file_errors(f"undo the storage change of {collection!r}"):
                    storage_change.recover(folder)
                raise
        indexed = ", now HNSW-indexed" if unindexed else ""
        return (f"{collection!r}: {copied:,} points moved from {storage.label(*before)} to "
                f"{storage.label(quantization, on_disk)}{indexed}, every id, payload and vector checked")

    def close_collection(self, collection: str) -> None:
        """Close the collection's shard and forget what was read of it (opened again on next use)."""
        shard = self._shards.pop(collection, None)
        if shard is not None:
            shard.close()
        for cache in (self._configs, self._spaces, self._stamps):
            cache.pop(collection, None)
        self._forget_counts(collection)

    def _remove_an_earlier_collections_files(self, collection: str) -> None:
        """Remove what an earlier collection of this name left in `amips/` (its shard deleted by hand):
        models and indexes of other points. Their stamps could never match the new one; removing them keeps
        `status` from listing them."""
        folder = self._folder(collection) / "amips"
        if folder.is_symlink() or not folder.is_dir():
            return
        removed = [p for p in folder.iterdir() if p.name != _LOCK_FILE and p.is_file() and not p.is_symlink()]
        with _file_errors(f"clear the leftover artifacts of {collection!r}"):
            for path in removed:
                path.unlink(missing_ok=True)
        if removed:
            log.warning("amips: removed %d file(s) an earlier collection %r left in %s (built for other points)",
                        len(removed), collection, folder)

    def _stamp_path(self, collection: str) -> Path:
        """In the shard's folder: the stamp goes wherever the points go (a shard deleted by hand takes it along)."""
        return self._folder(collection) / "shard" / _STAMP_FILE

    def _write_stamp(self, collection: str, stamp: WriteStamp) -> None:
        with _file_errors(f"write the write stamp of {collection!r}"):
            atomic_write(self._stamp_path(collection), json.dumps(stamp.as_manifest()).encode("ascii"))
        self._stamps[collection] = stamp

    def write_stamp(self, collection: str, create: bool = False) -> WriteStamp | None:
        """Read once per process, its absence included (the shard's WAL lock keeps other processes out, so only
        this object's writes change it); a missing or unreadable stamp file is no stamp, replaced by a new one
        when `create`."""
        if collection not in self._stamps:
            self._shard(collection)  # the collection must exist
            try:
                self._stamps[collection] = WriteStamp.parse(json.loads(read_bounded(self._stamp_path(collection), 256)))
            except (OSError, ValueError):
                self._stamps[collection] = None
        stamp = self._stamps[collection]
        if stamp is None and create:
            stamp = WriteStamp.new()
            self._write_stamp(collection, stamp)
        return stamp

    def read_pending_write(self, collection: str) -> dict[str, Any] | None:
        self._shard(collection)
        try:
            return json.loads(read_bounded(self._folder(collection) / "shard" / _PENDING_FILE, 4096))
        except (OSError, ValueError):
            return None

    def write_pending_write(self, collection: str, record: dict[str, Any] | None) -> None:
        path = self._folder(collection) / "shard" / _PENDING_FILE
        with _file_errors(f"record the pending write of {collection!r}"):
            if record is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, json.dumps(record).encode("ascii"))

    def bump_generation(self, collection: str) -> None:
        self._write_stamp(collection, (self.write_stamp(collection, create=True) or WriteStamp.new()).bumped())

    def upsert(self, collection: str, ids: np.ndarray, vectors: np.ndarray,
               payloads: Sequence[dict[str, Any] | None] | None = None, using: str | None = None) -> None:
        shard = self._shard(collection)
        name = self.resolve_vector(collection, using)[0]
        qdrant_ids = point_ids.to_qdrant_list(ids)
        rows = vectors.tolist()
        self.check_room(f"{len(ids):,} points to {collection!r}", int(vectors.nbytes))
        self.bump_generation(collection)
        try:
            with _engine_errors(f"write points to {collection!r}"):
                for start in range(0, len(ids), UPSERT_BATCH):
                    stop = start + UPSERT_BATCH
                    points = [edge.Point(i, {name: v} if name else v, p)
                              for i, v, p in zip(qdrant_ids[start:stop], rows[start:stop],
                                                 payloads[start:stop] if payloads else [None] * len(ids))]
                    shard.update(edge.UpdateOperation.upsert_points(points))
                shard.flush()
        finally:
            self._forget_counts(collection)  # counted again when next asked

    def existing(self, collection: str, ids: np.ndarray) -> np.ndarray:
        shard = self._shard(collection)
        found: list[Any] = []
        qdrant_ids = point_ids.to_qdrant_list(ids)
        for start in range(0, len(qdrant_ids), UPSERT_BATCH):
            found += [r.id for r in shard.retrieve(qdrant_ids[start:start + UPSERT_BATCH], False, False)]
        return point_ids.common([point_ids.as_id_array(found), ids])[0]

    def all_ids(self, collection: str, batch_size: int) -> Iterator[np.ndarray]:
        shard = self._shard(collection)
        for records in pages(lambda offset: shard.scroll(edge.ScrollRequest(offset=offset, limit=batch_size,
                                                                              with_vector=False, with_payload=False))):
            yield point_ids.as_id_array([r.id for r in records])

    def finish_bulk_load(self, collection: str) -> None:
        shard = self._shard(collection)
        with _engine_errors(f"index {collection!r}"):
            shard.optimize()
            shard.flush()

    def free_bytes(self) -> int | None:
        folder = self.root
        while not folder.exists() and folder != folder.parent:  # the store's folder is made by the first create
            folder = folder.parent
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            return None

    def scroll(self, collection: str, batch_size: int,
               using: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        shard = self._shard(collection)
        name = self.resolve_vector(collection, using)[0]
        holds = None if not name else edge.Filter(must=[edge.HasVectorCondition(name)])
        for records in pages(lambda offset: shard.scroll(edge.ScrollRequest(
                offset=offset, limit=batch_size, filter=holds, with_vector=[name] if name else True,
                with_payload=False))):
            yield records_as_arrays(records, name)

    # search ----------------------------------------------------------------------------------
    @staticmethod
    def _params(params: SearchParams) -> edge.SearchParams:
        return engine_search_params(params, edge)

    def _run(self, collection: str, requests: list[edge.QueryRequest], limit: int) -> SearchResult:
        shard = self._shard(collection)
        if len(requests) == 1:  # a single query: the engine's own call for one, without a batch around it
            return collect_results([shard.query(requests[0])], limit)
        return collect_results(shard.query_batch(edge.QueryBatchRequest(requests)), limit)

    def search(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams,
               using: str | None = None) -> SearchResult:
        name = self.resolve_vector(collection, using)[0] or None
        search_params, flt = self._params(params), edge_filter(params.filter)
        requests = [edge.QueryRequest(limit=limit, query=edge.Query.Nearest(q, using=name), params=search_params,
                                      filter=flt, with_payload=False, with_vector=False)
                    for q in _engine_vectors(queries)]
        return self._run(collection, requests, limit)

    def search_prefetched(self, collection: str, queries: np.ndarray, prefetch: list[np.ndarray],
                          candidates: int, limit: int, params: SearchParams, using: str | None = None) -> SearchResult:
        name = self.resolve_vector(collection, using)[0] or None
        search_params, flt = self._params(params), edge_filter(params.filter)
        rescore_params = self._params(params.rescoring())
        probes = [_engine_vectors(p) for p in prefetch]
        requests = [
            edge.QueryRequest(
                limit=limit,
                prefetches=[edge.Prefetch(limit=candidates, query=edge.Query.Nearest(p[row], using=name),
                                          params=search_params, filter=flt)
                            for p in probes],
                query=edge.Query.Nearest(query, using=name), params=rescore_params, filter=flt,
                with_payload=False, with_vector=False)
            for row, query in enumerate(_engine_vectors(queries))
        ]
        return self._run(collection, requests, limit)

    # what rides along --------------------------------------------------------------------------
    def _model_dir(self, collection: str) -> Path:
        """`<collection>/amips`; StoreError when it is a symbolic link or a file (`_own_folder`)."""
        self._shard(collection)  # the collection must exist
        return _own_folder(self._folder(collection) / "amips")

    def retrieve(self, collection: str, ids: np.ndarray, using: str | None = None) -> np.ndarray:
        name = self.resolve_vector(collection, using)[0]
        wanted = point_ids.to_qdrant_list(ids)
        found = self._shard(collection).retrieve(wanted, None, [name] if name else True)
        return vectors_in_order(collection, wanted, {point_ids.canonical(r.id): vector_of(r, name) for r in found})

    def records(self, collection: str, ids: np.ndarray, with_payload: Any = True,
                with_vectors: Any = False) -> dict[int | str, tuple[Any, Any]]:
        found = self._shard(collection).retrieve(point_ids.to_qdrant_list(ids), with_payload, with_vectors)
        return {point_ids.canonical(r.id): (r.payload, r.vector) for r in found}

    def _manifest_path(self, collection: str, slot: str, check_folder: bool = True) -> Path:
        """`manifest.json` (or pq.json, router.json); for a named vector `manifest@<name, %-quoted>.json`.
        Remembered per (collection, slot) once the collection is known: the query path asks every call."""
        path = self._manifest_paths.get((collection, slot))
        if path is None:
            base, vector = split_slot(slot)
            stem = _MANIFEST_FILES[base].removesuffix(".json")
            path = self._model_dir(collection) / (f"{stem}@{quote(vector, safe='')}.json" if vector else f"{stem}.json")
            self._manifest_paths[(collection, slot)] = path
        elif check_folder:
            _own_folder(path.parent)  # every read: a link planted after the first is refused too
        return path

    def read_manifest(self, collection: str, slot: str = "model") -> ManifestSchema | None:
        """The slot's manifest file, read with a size bound and validated (manifest_schema)."""
        slot = self.manifest_slot(collection, slot)
        return self._read_manifest_file(self._manifest_path(collection, slot), slot, collection)

    @staticmethod
    def _read_manifest_file(path: Path, slot: str, collection: str) -> ManifestSchema | None:
        """A manifest file (None when absent); ManifestError when it is unusable, a symbolic link included."""
        with _file_errors(f"read the manifest of {collection!r}"):
            if not os.path.lexists(path):
                return None
            try:
                text = read_bounded(path, MAX_MANIFEST_BYTES, follow_symlinks=False)
            except ValueError as exc:
                raise ManifestError(f"the {slot} manifest of {collection!r} is unusable ({exc}); "
                                    f"clear it with `{fix_command(slot, collection)}`") from None
        return parse_manifest_json(text, slot, collection)

    def manifest_token(self, collection: str, slot: str = "model") -> Hashable:
        """The manifest file's inode, size, modification and change times (a write replaces the file by
        rename, so its inode changes), and the count of this object's own manifest writes (two writes
        within one tick of the file system's clock could otherwise reuse an inode unseen). The folder is not
        re-checked here: a folder swapped for a link shows other files, so the next read checks it."""
        path = self._manifest_path(collection, self.manifest_slot(collection, slot), check_folder=False)
        try:
            info = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None, self._manifest_writes
        except OSError as exc:
            raise StoreError(f"cannot read the manifest of {collection!r}: {exc.strerror or exc}") from None
        return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns), self._manifest_writes

    def write_manifest(self, collection: str, manifest: dict[str, Any] | None, slot: str = "model") -> None:
        path = self._manifest_path(collection, self.manifest_slot(collection, slot))
        self._manifest_writes += 1
        with _file_errors(f"write the manifest of {collection!r}"):
            if manifest is None:
                path.unlink(missing_ok=True)
                return
            atomic_write(path, json.dumps(manifest, sort_keys=True, allow_nan=False).encode("utf-8"))

    def last_version(self, collection: str, slot: str = "model") -> int:
        path = self._manifest_path(collection, self.manifest_slot(collection, slot)).with_suffix(".removed")
        try:
            text = read_bounded(path, 32, follow_symlinks=False).decode("ascii").strip()
        except (OSError, ValueError, UnicodeDecodeError):
            return 0
        return int(text) if text.isdigit() and int(text) < MAX_VERSION else 0

    def remember_version(self, collection: str, slot: str, version: int) -> None:
        path = self._manifest_path(collection, self.manifest_slot(collection, slot)).with_suffix(".removed")
        with _file_errors(f"write the last version of {collection!r}"):
            atomic_write(path, str(int(version)).encode("ascii"))

    def write_blob(self, collection: str, blob_id: int, data: bytes) -> None:
        with _file_errors(f"write model blob {blob_id} of {collection!r}"):
            atomic_write(self._model_dir(collection) / f"blob-{blob_id}.amips", data)

    def read_blob(self, collection: str, blob_id: int, max_bytes: int = MAX_BLOB_BYTES) -> bytes:
        path = self._model_dir(collection) / f"blob-{int(blob_id)}.amips"
        try:
            return read_bounded(path, min(max_bytes, MAX_BLOB_BYTES), follow_symlinks=False)
        except FileNotFoundError:
            raise ArtifactError(f"model blob {blob_id} of {collection!r} is missing from the store") from None
        except ValueError as exc:
            raise ArtifactError(f"model blob {blob_id} of {collection!r} is unusable: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot read model blob {blob_id} of {collection!r}: {exc.strerror or exc}") from None

    def delete_blob(self, collection: str, blob_id: int | None) -> None:
        pattern = "blob-*.amips" if blob_id is None else f"blob-{blob_id}.amips"
        with _file_errors(f"delete model blobs of {collection!r}"):
            for path in self._model_dir(collection).glob(pattern):
                path.unlink(missing_ok=True)

    def stored_files(self, collection: str) -> list[StoredFile]:
        """The regular files in `amips/` named like a blob or an interrupted write's temporary file."""
        folder, now, found = self._model_dir(collection), time.time(), []
        with _file_errors(f"list the model files of {collection!r}"):
            if not folder.is_dir():
                return []
            for entry in os.scandir(folder):
                if not _may_be_leftover(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # renamed into place or removed meanwhile
                    continue
                blob = _BLOB_FILE.fullmatch(entry.name)
                found.append(StoredFile(entry.name, info.st_size, now - info.st_mtime,
                                        int(blob["id"]) if blob else None))
        return found

    def named_blobs(self, collection: str) -> set[int] | None:
        """From every manifest file in `amips/`: each vector's slots, and any a reader would not look for."""
        named: set[int] = set()
        for path, slot in self._manifest_files(collection):
            try:
                manifest = self._read_manifest_file(path, slot, collection)
            except AmipsError:
                return None
            if isinstance(manifest, BlobManifestSchema):
                named.add(manifest.blob)
        return named

    def _manifest_files(self, collection: str) -> list[tuple[Path, str]]:
        """(path, slot) of every file in `amips/` named like a manifest."""
        folder = self._model_dir(collection)
        with _file_errors(f"list the manifests of {collection!r}"):
            names = os.listdir(folder) if folder.is_dir() else []
        matches = [m for m in map(_MANIFEST_FILE.fullmatch, names) if m]
        return [(folder / m.string, _MANIFEST_STEMS[m["stem"]] + (f"@{unquote(m['vector'])}" if m["vector"] else ""))
                for m in matches]

    def remove_stored_file(self, collection: str, stored: StoredFile) -> None:
        if not _may_be_leftover(stored.name):
            raise InputError(f"{stored.name[:80]!r} is not a file amips removes from {collection!r}")
        path = self._model_dir(collection) / stored.name
        with _file_errors(f"remove {path}"):
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def manifest_lock(self, collection: str) -> Iterator[None]:
        """An exclusive lock on `<collection>/amips/.manifest.lock` (portalocker: `flock` on POSIX),
        retried until the timeout; the file is never opened through a symbolic link (`_open_lock_file`).

        flock locks belong to an open file description and every call opens the file anew, so this
        excludes other processes and other threads of this one alike; the kernel drops it when its holder dies.
        """
        folder = self._model_dir(collection)
        with _file_errors(f"take the manifest lock of {collection!r}"):
            folder.mkdir(parents=True, exist_ok=True)
            fd = _open_lock_file(folder / _LOCK_FILE)
        try:
            _lock(fd, collection, self.manifest_lock_timeout)
            yield
        finally:
            os.close(fd)  # drops the lock

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
