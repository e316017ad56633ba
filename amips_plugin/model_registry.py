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
   new model is already live).

A reader reads the manifest first and then the blob it names, so it sees the old model or the new
one, never a mix; if the blob disappears between the two reads (replaced meanwhile), it reads the
new manifest again. A writer interrupted before its commit removes its own blob when it can; a
killed one leaves at most an unreferenced blob, which no reader ever opens (only a manifest names
blobs, and it is written last).

The manifest: {"version", "blob", "sha256", "bytes", "model" (architecture), "dtype",
"fingerprint" (keys trained on), "metrics" (validation at training time), "created", "stale",
"slot"}; its schema, checked at every read, is in manifest_schema.py.

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
import secrets
import time
from dataclasses import dataclass
from typing import Any

from amips_plugin.adapters.base import MANIFEST_SLOTS, VectorStore
from amips_plugin.compression.artifact import LoadedModel, decode_model

from .core.errors import AmipsError, ArtifactError, ConcurrentPublishError, StoreError
from .core.limits import MAX_BLOB_BYTES
from .manifest_schema import ManifestError
from .fingerprint import KeyFingerprint

SCROLL_BATCH = 4096
BLOB_ID_BITS = 40
LOAD_ATTEMPTS = 3
READ_NOW: Any = object()  # publish's default `expected`: the manifest as it is when publishing starts
log = logging.getLogger("amips")

@dataclass(frozen=True)
class BrokenManifest:
    """A manifest that is present but does not validate: what a writer replaces, or a drop removes."""

    reason: str


@dataclass(frozen=True)
class StoredModel:
    loaded: LoadedModel
    manifest: dict[str, Any]


def identity(manifest: dict[str, Any] | BrokenManifest | None) -> tuple[Any, Any] | None:
    """What a compare-and-swap compares: (version, blob id). Blob ids are random, so a model dropped and
    republished under the same version number still differs; the stale flag is not part of it. Every
    broken manifest compares equal to every other (a writer replaces whatever is broken there)."""
    if isinstance(manifest, BrokenManifest):
        return ("broken", None)
    return None if not manifest else (manifest.get("version"), manifest.get("blob"))


def read_for_replace(store: VectorStore, collection: str, slot: str = "model") -> dict[str, Any] | BrokenManifest | None:
    """The slot's manifest as a writer sees it: a broken one is something to replace, not an error."""
    try:
        return store.read_manifest(collection, slot)
    except ManifestError as exc:
        return BrokenManifest(str(exc))


def _describe(manifest: dict[str, Any] | BrokenManifest | None) -> str:
    if isinstance(manifest, BrokenManifest):
        return "now unreadable"
    return "removed" if not manifest else f"now version {manifest.get('version')}"


def _named_elsewhere(store: VectorStore, collection: str, slot: str, blob_id: int) -> bool:
    """Whether a slot other than `slot` names `blob_id`, or might (its manifest cannot be read)."""
    for other in MANIFEST_SLOTS:
        if other == slot:
            continue
        try:
            manifest = store.read_manifest(collection, other)
        except AmipsError:
            return True
        if manifest and manifest.get("blob") == blob_id:
            return True
    return False


def _discard_replaced(store: VectorStore, collection: str, slot: str, manifest: Any) -> None:
    """Remove the blob a replaced or dropped manifest of `slot` named, unless another slot names it."""
    blob_id = manifest.get("blob") if isinstance(manifest, dict) else None
    if type(blob_id) is not int:
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
                 slot: str = "model", stale: bool = False,
                 expected: dict[str, Any] | BrokenManifest | None = READ_NOW) -> dict[str, Any]:
    """The publish protocol for any blob kept alongside a collection; returns the new manifest.

    `expected`: the manifest this blob replaces (None: there was none); ConcurrentPublishError when
    the slot holds something else at commit time. `stale` is committed with the manifest itself, so
    no reader sees a stale blob marked fresh; the commit is also marked stale when a write to the
    collection marked `expected` stale meanwhile (the keys changed under the caller).
    """
    if expected is READ_NOW:
        expected = read_for_replace(store, collection, slot)
    blob_id = secrets.randbits(BLOB_ID_BITS)
    sha256 = hashlib.sha256(blob).hexdigest()
    committed = False
    try:
        store.write_blob(collection, blob_id, blob)
        if hashlib.sha256(store.read_blob(collection, blob_id)).hexdigest() != sha256:
            raise StoreError(f"blob {blob_id} of {collection!r} did not read back intact; nothing was published")
        with store.manifest_lock(collection):
            current = read_for_replace(store, collection, slot)
            if identity(current) != identity(expected):
                raise ConcurrentPublishError(
                    f"another writer changed the {slot} of {collection!r} while this one worked "
                    f"({_describe(current)}); this {slot} was discarded — run the command again")
            previous = current if isinstance(current, dict) else None
            keys_changed = bool(previous and previous.get("stale")
                                and not (expected if isinstance(expected, dict) else {}).get("stale"))
            version = (previous["version"] if previous else store.last_version(collection, slot)) + 1
            manifest = {**fields, "version": version, "blob": blob_id,
                        "sha256": sha256, "bytes": len(blob), "slot": slot,
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
    _discard_replaced(store, collection, slot, current)
    return manifest


def _landed(store: VectorStore, collection: str, slot: str, blob_id: int) -> bool:
    """After a failed manifest write: did it land anyway? Unknown (unreadable) counts as landed, so
    the blob is kept rather than deleted from under a manifest that may name it."""
    try:
        current = store.read_manifest(collection, slot)
    except Exception:
        return True
    return (current or {}).get("blob") == blob_id


def publish(store: VectorStore, collection: str, blob: bytes, fingerprint: dict[str, Any],
            metrics: dict[str, Any] | None = None, stale: bool = False,
            expected: dict[str, Any] | BrokenManifest | None = READ_NOW) -> dict[str, Any]:
    """Store `blob` (a model artifact) as the collection's model and return the new manifest."""
    fields = {**model_fields(blob, metrics), "fingerprint": fingerprint}
    return publish_blob(store, collection, blob, fields, stale=stale, expected=expected)


def model_fields(blob: bytes, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model manifest's own fields, from the artifact, which must load (never publish one that does not)."""
    header = decode_model(blob).header
    return {"model": header["model"], "dtype": header["dtype"], "metrics": metrics or {}}


def read_verified_blob(store: VectorStore, collection: str, manifest: dict[str, Any]) -> bytes:
    try:
        blob_id, sha256 = int(manifest["blob"]), str(manifest["sha256"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"the manifest of {collection!r} is malformed or from an incompatible amips version; "
                            "retrain, or drop the model") from None
    size = manifest.get("bytes")
    bound = size if type(size) is int else MAX_BLOB_BYTES
    blob = store.read_blob(collection, blob_id, bound)
    if len(blob) != bound and bound != MAX_BLOB_BYTES:
        raise ArtifactError(f"blob {blob_id} of {collection!r} has {len(blob)} bytes, its manifest says {bound}")
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
            loaded = decode_model(read_verified_blob(store, collection, manifest))
            if loaded.header["model"] != manifest["model"]:
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
            if manifest and not manifest.get("stale"):
                store.write_manifest(collection, {**manifest, "stale": True}, slot)


def drop(store: VectorStore, collection: str, slot: str = "model") -> bool:
    """Remove the slot's manifest, then its blob (so no reader is left pointing at a deleted blob).

    A broken manifest is removed too (that is how a user clears it); the blob goes only when it is
    this slot's own (no other slot names it), so a tampered manifest cannot delete another's blob."""
    with store.manifest_lock(collection):
        manifest = read_for_replace(store, collection, slot)
        if isinstance(manifest, dict):  # the next publish continues from its version, not from 1
            store.remember_version(collection, slot, int(manifest["version"]))
        store.write_manifest(collection, None, slot)
    _discard_replaced(store, collection, slot, manifest)
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
