"""Models stored alongside their collection (DESIGN.md §5).

Publishing a new model is a compare-and-swap on the collection's manifest:

1. the caller reads the manifest its work replaces (`expected`; `amips train` reads it before it
   reads the keys, so a trainer that overlaps another one in time is caught);
2. the artifact is written under a fresh random blob id and read back against its checksum;
3. under the store's manifest lock (an flock for Edge, a leased lock point on a server, a lock in
   the process for local mode), the manifest is re-read: if it is no longer `expected` (another
   writer published or dropped a model meanwhile), this writer removes its own blob and raises
   ConcurrentPublishError; otherwise it writes the new manifest — the commit point;
4. after the commit, the blob it replaced is removed (best effort: a failure there is logged, the
   new model is already live).

A reader reads the manifest first and then the blob it names, so it sees the old model or the new
one, never a mix; if the blob disappears between the two reads (replaced meanwhile), it reads the
new manifest again. A writer interrupted before its commit removes its own blob when it can; a
killed one leaves at most an unreferenced blob, which no reader ever opens (only a manifest names
blobs, and it is written last).

The manifest: {"version", "blob", "sha256", "bytes", "model" (architecture), "dtype",
"fingerprint" (keys trained on), "metrics" (validation at training time), "created", "stale"}.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from adapters.base import MANIFEST_SLOTS, VectorStore
from compression.artifact import LoadedModel, decode_model

from .errors import ArtifactError, ConcurrentPublishError, StoreError
from .fingerprint import KeyFingerprint

SCROLL_BATCH = 4096
BLOB_ID_BITS = 40
LOAD_ATTEMPTS = 3
READ_NOW: Any = object()  # publish's default `expected`: the manifest as it is when publishing starts
log = logging.getLogger("amips")

@dataclass(frozen=True)
class StoredModel:
    loaded: LoadedModel
    manifest: dict[str, Any]


def identity(manifest: dict[str, Any] | None) -> tuple[Any, Any] | None:
    """What a compare-and-swap compares: (version, blob id). Blob ids are random, so a model dropped and
    republished under the same version number still differs; the stale flag is not part of it."""
    return None if not manifest else (manifest.get("version"), manifest.get("blob"))


def _describe(manifest: dict[str, Any] | None) -> str:
    return "removed" if not manifest else f"now version {manifest.get('version')}"


def _discard(store: VectorStore, collection: str, blob_id: int) -> None:
    """Remove a blob no manifest names; best effort (an orphan is never read, only wasted space)."""
    try:
        store.delete_blob(collection, blob_id)
    except Exception as exc:  # the store may be what failed
        log.warning("amips: could not remove blob %s of %r, which no manifest names: %s", blob_id, collection, exc)


def publish_blob(store: VectorStore, collection: str, blob: bytes, fields: dict[str, Any],
                 slot: str = "model", stale: bool = False, expected: dict[str, Any] | None = READ_NOW) -> dict[str, Any]:
    """The publish protocol for any blob kept alongside a collection; returns the new manifest.

    `expected`: the manifest this blob replaces (None: there was none); ConcurrentPublishError when
    the slot holds something else at commit time. `stale` is committed with the manifest itself, so
    no reader sees a stale blob marked fresh; the commit is also marked stale when a write to the
    collection marked `expected` stale meanwhile (the keys changed under the caller).
    """
    if expected is READ_NOW:
        expected = store.read_manifest(collection, slot)
    blob_id = secrets.randbits(BLOB_ID_BITS)
    sha256 = hashlib.sha256(blob).hexdigest()
    committed = False
    try:
        store.write_blob(collection, blob_id, blob)
        if hashlib.sha256(store.read_blob(collection, blob_id)).hexdigest() != sha256:
            raise StoreError(f"blob {blob_id} of {collection!r} did not read back intact; nothing was published")
        with store.manifest_lock(collection):
            current = store.read_manifest(collection, slot)
            if identity(current) != identity(expected):
                raise ConcurrentPublishError(
                    f"another writer changed the {slot} of {collection!r} while this one worked "
                    f"({_describe(current)}); this {slot} was discarded — run the command again")
            keys_changed = bool(current and current.get("stale") and not (expected or {}).get("stale"))
            manifest = {**fields, "version": int(current["version"]) + 1 if current else 1, "blob": blob_id,
                        "sha256": sha256, "bytes": len(blob),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stale": stale or keys_changed}
            try:
                store.write_manifest(collection, manifest, slot)
            except BaseException:
                committed = _landed(store, collection, slot, blob_id)  # a lost reply may hide a landed write
                if not committed:
                    raise
            committed = True
    finally:
        if not committed:
            _discard(store, collection, blob_id)
    if current and isinstance(current.get("blob"), int):
        _discard(store, collection, current["blob"])
    return manifest


def _landed(store: VectorStore, collection: str, slot: str, blob_id: int) -> bool:
    """After a failed manifest write: did it land anyway? Unknown (unreadable) counts as landed, so
    the blob is kept rather than deleted from under a manifest that may name it."""
    try:
        return (store.read_manifest(collection, slot) or {}).get("blob") == blob_id
    except Exception:
        return True


def publish(store: VectorStore, collection: str, blob: bytes, fingerprint: dict[str, Any],
            metrics: dict[str, Any] | None = None, stale: bool = False,
            expected: dict[str, Any] | None = READ_NOW) -> dict[str, Any]:
    """Store `blob` (a model artifact) as the collection's model and return the new manifest."""
    header = decode_model(blob).header  # never publish something that does not load
    fields = {"model": header["model"], "dtype": header["dtype"], "fingerprint": fingerprint, "metrics": metrics or {}}
    return publish_blob(store, collection, blob, fields, stale=stale, expected=expected)


def read_verified_blob(store: VectorStore, collection: str, manifest: dict[str, Any]) -> bytes:
    try:
        blob_id, sha256 = int(manifest["blob"]), str(manifest["sha256"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"the manifest of {collection!r} is malformed or from an incompatible amips version; "
                            "retrain, or drop the model") from None
    blob = store.read_blob(collection, blob_id)
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise ArtifactError(f"blob {manifest['blob']} of {collection!r} does not match its manifest checksum")
    return blob


def load(store: VectorStore, collection: str) -> StoredModel | None:
    """The collection's model, verified against its manifest; None when there is none.

    A blob that is gone or changed by the time it is read was replaced by a publish between the two
    reads: the manifest is read again (up to LOAD_ATTEMPTS times), so a reader gets the new model.
    """
    for attempt in range(LOAD_ATTEMPTS):
        manifest = store.read_manifest(collection)
        if not manifest:
            return None
        try:
            return StoredModel(decode_model(read_verified_blob(store, collection, manifest)), manifest)
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
            if manifest and not manifest.get("stale"):
                store.write_manifest(collection, {**manifest, "stale": True}, slot)


def drop(store: VectorStore, collection: str) -> bool:
    """Remove the model (manifest first, so no reader is left pointing at a deleted blob).

    An unreadable manifest is removed too (that is how a user clears it)."""
    with store.manifest_lock(collection):
        try:
            manifest = store.read_manifest(collection)
        except ArtifactError:
            manifest = {"unreadable": True}
        store.write_manifest(collection, None)
    if isinstance(manifest, dict) and isinstance(manifest.get("blob"), int):
        _discard(store, collection, manifest["blob"])
    return manifest is not None


def current_fingerprint(store: VectorStore, collection: str) -> dict[str, Any]:
    fingerprint = KeyFingerprint()
    for ids, vectors in store.scroll(collection, SCROLL_BATCH):
        fingerprint.update(ids, vectors)
    return fingerprint.result()


def is_stale(manifest: dict[str, Any], fingerprint: dict[str, Any] | None = None) -> bool:
    """Stale when marked so by a write, or when the keys no longer match those trained on."""
    if manifest.get("stale"):
        return True
    return fingerprint is not None and fingerprint != manifest.get("fingerprint")
