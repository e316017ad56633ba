"""Models stored alongside their collection (docs/design.md §5).

Publishing a new model is a compare-and-swap on the collection's manifest:

1. the caller reads the manifest its work replaces (`expected`; `amips train` reads it before it
   reads the keys, so a trainer that overlaps another one in time is caught);
2. the artifact is written under a fresh random blob id and read back against its checksum;
3. under the store's manifest lock (an flock for Edge, a leased lock point on a server, a lock in
   the process for local mode), the manifest is re-read: if it is no longer `expected` (another
   writer published or dropped a model meanwhile), this writer removes its own blob and raises
   ConcurrentPublishError; otherwise it writes the new manifest — the commit point;
4. after the commit, the blob it replaced is removed (best effort: a failure there is logged, the
   new model is already live); still under the lock, so are the collection's `leftovers`.

A reader reads the manifest first and then the blob it names, so it sees the old model or the new
one, never a mix; if the blob disappears between the two reads (replaced meanwhile), it reads the
new manifest again. A writer interrupted before its commit removes its own blob when it can; a
killed one leaves at most an unreferenced blob and a temporary file, which no reader ever opens (only
a manifest names blobs, and it is written last); the next commit, or `amips status --clean`, removes
them once they are older than LEFTOVER_GRACE manifest-lock timeouts.

The manifest: {"version", "blob", "sha256", "bytes", "model" (architecture), "dtype",
"fingerprint" (keys trained on), "metrics" (validation at training time), "created", "stale",
"slot"}; written as a dict, read back typed by its schema (core/manifest_schema.py: ModelManifestSchema),
which every read checks.

Stored state is untrusted input. A manifest that does not validate is "no usable model" for
readers, and never blocks a writer: `train`, the side-index builds and `drop-model` /
`drop-index` replace or remove it (read_for_replace). A blob is removed only by its own slot, and
only when no other slot's manifest names it (or might: an unreadable one), so a tampered manifest
naming another slot's blob cannot get that blob deleted; blobs are read with their manifest's
"bytes" as a bound.
"""
from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

import numpy as np

from amips_plugin.adapters.base import MANIFEST_SLOTS, StoredFile, VectorStore, WriteStamp

from .core.errors import AmipsError, ArtifactError, ConcurrentPublishError, StoreError
from .core.manifest_schema import (BlobManifestSchema, ManifestError, ManifestSchema, ModelManifestSchema,
                                   PolicyManifestSchema, as_schema, check_outgoing)
from .fingerprint import KeyFingerprint, check_ids_cover

if TYPE_CHECKING:  # torch: imported only where a model is published or loaded
    from .model_artifact import LoadedModel

SCROLL_BATCH = 4096
BLOB_ID_BITS = 40
LOAD_ATTEMPTS = 3
LEFTOVER_GRACE = 2  # manifest-lock timeouts: a live writer takes the lock to commit its blob within one of
                    # writing it (or gives up and removes it); the second is margin for its read-back
READ_NOW: Any = object()  # publish's default `expected`: the manifest as it is when publishing starts
log = logging.getLogger("amips")

@dataclass(frozen=True)
class BrokenManifest:
    """A manifest that is present but does not validate: what a writer replaces, or a drop removes."""

    reason: str


Read = ManifestSchema | BrokenManifest | None  # a slot as a writer sees it (`read_for_replace`)


@dataclass(frozen=True)
class StoredModel:
    loaded: LoadedModel
    manifest: ModelManifestSchema


def identity(manifest: Read) -> tuple[int | str, int | None] | None:
    """What a compare-and-swap compares: (version, blob id, or the random id of a manifest without a blob).
    Ids are random, so a manifest dropped and republished under the same version number still differs;
    the stale flag is not part of it. Every broken manifest compares equal to every other (a writer
    replaces whatever is broken there)."""
    if isinstance(manifest, BrokenManifest):
        return ("broken", None)
    if manifest is None:
        return None
    return manifest.version, manifest.id if isinstance(manifest, PolicyManifestSchema) else _blob_of(manifest)


def _blob_of(manifest: Read) -> int | None:
    """The blob a manifest names (a policy, or what is broken or absent, names none)."""
    return manifest.blob if isinstance(manifest, BlobManifestSchema) else None


def read_for_replace(store: VectorStore, collection: str, slot: str = "model") -> Read:
    """The slot's manifest as a writer sees it: a broken one is something to replace, not an error."""
    try:
        return store.read_manifest(collection, slot)
    except ManifestError as exc:
        return BrokenManifest(str(exc))


def _describe(manifest: Read) -> str:
    if isinstance(manifest, BrokenManifest):
        return "now unreadable"
    return "removed" if manifest is None else f"now version {manifest.version}"


def _named_elsewhere(store: VectorStore, collection: str, slot: str, blob_id: int) -> bool:
    """Whether a slot other than `slot` names `blob_id`, or might (its manifest cannot be read)."""
    for other in MANIFEST_SLOTS:
        if other == slot:
            continue
        try:
            manifest = store.read_manifest(collection, other)
        except AmipsError:
            return True
        if _blob_of(manifest) == blob_id:
            return True
    return False


def _discard_replaced(store: VectorStore, collection: str, slot: str, manifest: Read) -> None:
    """Remove the blob a replaced or dropped manifest of `slot` named, unless another slot names it."""
    blob_id = _blob_of(manifest)
    if blob_id is None:
        return
    if _named_elsewhere(store, collection, slot, blob_id):
        log.warning("amips: the %s manifest of %r named blob %s, which another slot uses (or may); it was kept",
                    slot, collection, blob_id)
        return
    _discard(store, collection, blob_id)


def _discard(store: VectorStore, collection: str, blob_id: int) -> None:
    """Remove a blob no manifest names; best effort (an orphan is never read, only wasted space)."""
    try:
        store.delete_blob(collection, blob_id)
    except Exception as exc:  # the store may be what failed
        log.warning("amips: could not remove blob %s of %r, which no manifest names: %s", blob_id, collection, exc)


def publish_blob(store: VectorStore, collection: str, blob: bytes, fields: dict[str, Any],
                 slot: str = "model", stale: bool = False, expected: Read = READ_NOW,
                 bound_to: WriteStamp | None = READ_NOW) -> dict[str, Any]:
    """The publish protocol for any blob kept alongside a collection; returns the new manifest.

    `expected`: the manifest this blob replaces (None: there was none); ConcurrentPublishError when
    the slot holds something else at commit time. `bound_to`: the collection's write stamp when the
    caller read the points the blob was built from (default: as it is now), recorded in the manifest
    (amips_plugin/freshness.py). `stale` is committed with the manifest itself, so no reader sees a
    stale blob marked fresh; the commit is also marked stale when the collection was written since
    `bound_to` (checked under the manifest lock) or a write marked `expected` stale meanwhile.
    """
    if expected is READ_NOW:
        expected = read_for_replace(store, collection, slot)
    if bound_to is READ_NOW:
        bound_to = store.write_stamp(collection, create=True)
    blob_id = secrets.randbits(BLOB_ID_BITS)
    sha256 = hashlib.sha256(blob).hexdigest()
    try:
        store.write_blob(collection, blob_id, blob)
        if hashlib.sha256(store.read_blob(collection, blob_id)).hexdigest() != sha256:
            raise StoreError(f"blob {blob_id} of {collection!r} did not read back intact; nothing was published")
        manifest, replaced = commit_manifest(store, collection, slot,
                                             {**fields, "blob": blob_id, "sha256": sha256, "bytes": len(blob)},
                                             expected, bound_to, stale)
    except BaseException:
        if not _landed(store, collection, slot, lambda now: _blob_of(now) == blob_id):
            _discard(store, collection, blob_id)
        raise
    _discard_replaced(store, collection, slot, replaced)
    return manifest


def commit_manifest(store: VectorStore, collection: str, slot: str, fields: dict[str, Any], expected: Read,
                    bound_to: WriteStamp | None, stale: bool = False) -> tuple[dict[str, Any], Read]:
    """The commit point of every publish (a model or side index after its blob is stored, or the serving
    policy, which has none): under the manifest lock, check that the slot still holds `expected`
    (ConcurrentPublishError otherwise), then write `fields` as the slot's manifest with the next version,
    `bound_to`, and `stale` — also set when the collection was written since `bound_to` or a write marked
    `expected` stale meanwhile. Returns the new manifest and the one it replaced."""
    with store.manifest_lock(collection):
        current = read_for_replace(store, collection, slot)
        if identity(current) != identity(expected):
            raise ConcurrentPublishError(
                f"another writer changed the {slot} of {collection!r} while this one worked "
                f"({_describe(current)}); this {slot} was discarded — run the command again")
        previous = current if isinstance(current, ManifestSchema) else None
        keys_changed = (store.write_stamp(collection) != bound_to
                        or bool(previous and previous.stale
                                and not (isinstance(expected, ManifestSchema) and expected.stale)))
        version = (previous.version if previous else store.last_version(collection, slot)) + 1
        manifest = {**fields, "version": version, "bound_to": bound_to.as_manifest() if bound_to else None,
                    "slot": slot, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "stale": stale or keys_changed}
        written = check_outgoing(manifest, slot, collection)
        try:
            store.write_manifest(collection, manifest, slot)
        except BaseException:
            if not _landed(store, collection, slot, lambda now: identity(now) == identity(written)):
                raise  # a lost reply may hide a landed write: then this is committed
        _remove_leftovers_quietly(store, collection)
    return manifest, current


def leftovers(store: VectorStore, collection: str) -> list[StoredFile]:
    """The files alongside the collection that no reader will ever open: temporary files of interrupted
    writes, and blobs no manifest of any slot names (none while a manifest cannot be read: it might name
    any). Only those last written over LEFTOVER_GRACE manifest-lock timeouts ago, so a live writer's
    blob, written before it takes the lock to commit, is never one. [] where the store cannot list its
    files (qdrant-client's sidecar: Edge only)."""
    grace = LEFTOVER_GRACE * store.manifest_lock_timeout
    found = [f for f in store.stored_files(collection) if f.age > grace]
    if not any(f.blob is not None for f in found):
        return found
    named = store.named_blobs(collection)
    return [f for f in found if f.blob is None or (named is not None and f.blob not in named)]


def clean_leftovers(store: VectorStore, collection: str) -> list[StoredFile]:
    """Remove the collection's `leftovers` under the manifest lock (so no manifest changes meanwhile);
    returns what was removed."""
    with store.manifest_lock(collection):
        return _remove_leftovers(store, collection)


def _remove_leftovers(store: VectorStore, collection: str) -> list[StoredFile]:
    found = leftovers(store, collection)
    for stored in found:
        store.remove_stored_file(collection, stored)
    return found


def _remove_leftovers_quietly(store: VectorStore, collection: str) -> None:
    """After a commit, under the lock: best effort (a leftover is never read, only wasted space)."""
    try:
        _remove_leftovers(store, collection)
    except Exception as exc:  # the store may be what failed; the commit stands
        log.warning("amips: could not remove the leftover files of %r: %s", collection, exc)


def _landed(store: VectorStore, collection: str, slot: str, is_ours: Callable[[ManifestSchema | None], bool]) -> bool:
    """After a failed write: does the slot hold this writer's manifest anyway? Unknown (unreadable) counts as
    landed, so a blob is kept rather than deleted from under a manifest that may name it."""
    try:
        current = store.read_manifest(collection, slot)
    except Exception:
        return True
    return is_ours(current)


def publish(store: VectorStore, collection: str, blob: bytes, fingerprint: dict[str, Any],
            metrics: dict[str, Any] | None = None, stale: bool = False, expected: Read = READ_NOW,
            bound_to: WriteStamp | None = READ_NOW) -> dict[str, Any]:
    """Store `blob` (a model artifact) as the collection's model and return the new manifest."""
    fields = {**model_fields(blob, metrics), "fingerprint": fingerprint}
    return publish_blob(store, collection, blob, fields, stale=stale, expected=expected, bound_to=bound_to)


def model_fields(blob: bytes, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model manifest's own fields, from the artifact, which must load (never publish one that does not);
    an undefined metric (NaN: E_rel when every validation query is its own best key) is stored as null."""
    from .model_artifact import decode_model  # torch: only where a model is published or loaded

    header = decode_model(blob).header
    defined = {name: value if not isinstance(value, float) or math.isfinite(value) else None
               for name, value in (metrics or {}).items()}
    return {"model": header["model"], "dtype": header["dtype"], "metrics": defined}


class CoversIds(Protocol):
    @property
    def ids(self) -> np.ndarray:
        """The point ids a side index names."""
        ...


Index = TypeVar("Index", bound=CoversIds)


def load_side_index(store: VectorStore, collection: str, slot: str, decode: Callable[[bytes], Index],
                    description: str) -> tuple[Index, BlobManifestSchema] | None:
    """(the side index in `slot`, its manifest), or None when there is none: its blob read and verified
    against the manifest's checksum, decoded, and its ids checked to be those of the keys it was built on."""
    manifest = as_schema(store.read_manifest(collection, slot), BlobManifestSchema)
    if manifest is None:
        return None
    index = decode(read_verified_blob(store, collection, manifest))
    check_ids_cover(index.ids, None if manifest.fingerprint is None else manifest.fingerprint.count, description)
    return index, manifest


def read_verified_blob(store: VectorStore, collection: str, manifest: BlobManifestSchema) -> bytes:
    """The blob `manifest` names, read with its size as the bound; ArtifactError unless it has that size and
    checksum."""
    blob = store.read_blob(collection, manifest.blob, manifest.bytes)
    if len(blob) != manifest.bytes:
        raise ArtifactError(f"blob {manifest.blob} of {collection!r} has {len(blob)} bytes, "
                            f"its manifest says {manifest.bytes}")
    if hashlib.sha256(blob).hexdigest() != manifest.sha256:
        raise ArtifactError(f"blob {manifest.blob} of {collection!r} does not match its manifest checksum")
    return blob


def load(store: VectorStore, collection: str) -> StoredModel | None:
    """The collection's model, verified against its manifest; None when there is none.

    A blob that is gone or changed by the time it is read was replaced by a publish between the two
    reads: the manifest is read again (up to LOAD_ATTEMPTS times), so a reader gets the new model.
    """
    from .model_artifact import decode_model  # torch: only where a model is published or loaded

    for attempt in range(LOAD_ATTEMPTS):
        manifest = as_schema(store.read_manifest(collection), ModelManifestSchema)
        if manifest is None:
            return None
        try:
            loaded = decode_model(read_verified_blob(store, collection, manifest))
            if loaded.header["model"] != manifest.model.to_dict():
                raise ArtifactError(f"the model manifest of {collection!r} does not describe its blob's architecture; "
                                    f"retrain, or clear it with `amips drop-model {collection}`")
            return StoredModel(loaded, manifest)
        except ArtifactError:
            if attempt + 1 == LOAD_ATTEMPTS or identity(store.read_manifest(collection)) == identity(manifest):
                raise
    raise AssertionError("unreachable")


def read_blob(store: VectorStore, collection: str) -> bytes:
    """The current artifact's bytes (for export)."""
    stored = load(store, collection)
    if stored is None:
        raise ArtifactError(f"collection {collection!r} has no model")
    return read_verified_blob(store, collection, stored.manifest)


def mark_stale(store: VectorStore, collection: str) -> None:
    """After a write: the model and the compressed key store no longer describe every key.

    Under the manifest lock, so it can neither undo a concurrent publish nor be lost to one.
    """
    with store.manifest_lock(collection):
        for slot in MANIFEST_SLOTS:
            try:
                manifest = store.read_manifest(collection, slot)
            except ArtifactError:  # unreadable: the query path already ignores it
                continue
            if manifest and not manifest.stale:
                store.write_manifest(collection, {**manifest.to_dict(), "stale": True}, slot)


def drop(store: VectorStore, collection: str, slot: str = "model") -> bool:
    """Remove the slot's manifest, then its blob (so no reader is left pointing at a deleted blob).

    A broken manifest is removed too (that is how a user clears it); the blob goes only when it is
    this slot's own (no other slot names it), so a tampered manifest cannot delete another's blob."""
    with store.manifest_lock(collection):
        manifest = read_for_replace(store, collection, slot)
        if isinstance(manifest, ManifestSchema):  # the next publish continues from its version, not from 1
            store.remember_version(collection, slot, manifest.version)
        store.write_manifest(collection, None, slot)
    _discard_replaced(store, collection, slot, manifest)
    return manifest is not None


def current_fingerprint(store: VectorStore, collection: str) -> dict[str, Any]:
    fingerprint = KeyFingerprint()
    for ids, vectors in store.scroll(collection, SCROLL_BATCH):
        fingerprint.update(ids, vectors)
    return fingerprint.result()
