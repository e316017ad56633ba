"""Models stored alongside their collection (DESIGN.md §5).

Publishing a new model: write the artifact under a fresh random blob id, re-read the manifest, then
replace it (the commit point), then remove the blob it replaced. A reader reads the manifest first
and then the blob it names, so it sees the old model or the new one, never a mix. A writer that
finds the manifest changed under it (another trainer committed) backs off: it removes its own blob
and raises ConcurrentPublishError. Blobs of other writers are never touched, so a slow writer's
blob cannot be deleted under it; a crashed writer leaves at most an orphan blob, which `drop`
removes. (The re-read narrows the race window; it is not a server-side compare-and-swap.)

The manifest: {"version", "blob", "sha256", "bytes", "model" (architecture), "dtype",
"fingerprint" (keys trained on), "metrics" (validation at training time), "created", "stale"}.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from adapters.base import MANIFEST_SLOTS, VectorStore
from compression.artifact import LoadedModel, decode_model

from .errors import AmipsError, ArtifactError
from .fingerprint import KeyFingerprint

SCROLL_BATCH = 4096
BLOB_ID_BITS = 40


class ConcurrentPublishError(AmipsError):
    """Another writer published a model for the same collection while this one was writing."""


@dataclass(frozen=True)
class StoredModel:
    loaded: LoadedModel
    manifest: dict[str, Any]


def publish_blob(store: VectorStore, collection: str, blob: bytes, fields: dict[str, Any],
                 slot: str = "model", stale: bool = False) -> dict[str, Any]:
    """The publish protocol for any blob kept alongside a collection; returns the new manifest.

    `stale` is committed with the manifest itself, so no reader sees a stale blob marked fresh.
    """
    before = store.read_manifest(collection, slot)
    blob_id = secrets.randbits(BLOB_ID_BITS)
    store.write_blob(collection, blob_id, blob)
    current = store.read_manifest(collection, slot)
    if (current or {}).get("version") != (before or {}).get("version"):
        store.delete_blob(collection, blob_id)
        raise ConcurrentPublishError(f"another {slot} was published for {collection!r} meanwhile "
                                     f"(now version {(current or {}).get('version')}); this one was discarded")
    manifest = {**fields, "version": int(before["version"]) + 1 if before else 1, "blob": blob_id,
                "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stale": stale}
    store.write_manifest(collection, manifest, slot)
    if before and isinstance(before.get("blob"), int):
        store.delete_blob(collection, before["blob"])
    return manifest


def publish(store: VectorStore, collection: str, blob: bytes, fingerprint: dict[str, Any],
            metrics: dict[str, Any] | None = None, stale: bool = False) -> dict[str, Any]:
    """Store `blob` (a model artifact) as the collection's model and return the new manifest."""
    header = decode_model(blob).header  # never publish something that does not load
    fields = {"model": header["model"], "dtype": header["dtype"], "fingerprint": fingerprint, "metrics": metrics or {}}
    return publish_blob(store, collection, blob, fields, stale=stale)


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
    """The collection's model, verified against its manifest; None when there is none."""
    manifest = store.read_manifest(collection)
    if not manifest:
        return None
    return StoredModel(decode_model(read_verified_blob(store, collection, manifest)), manifest)


def read_blob(store: VectorStore, collection: str) -> bytes:
    """The current artifact's bytes (for export)."""
    stored = load(store, collection)
    if stored is None:
        raise ArtifactError(f"collection {collection!r} has no model")
    return read_verified_blob(store, collection, stored.manifest)


def mark_stale(store: VectorStore, collection: str) -> None:
    """After a write: the model and the compressed key store no longer describe every key."""
    for slot in MANIFEST_SLOTS:
        manifest = store.read_manifest(collection, slot)
        if manifest and not manifest.get("stale"):
            store.write_manifest(collection, {**manifest, "stale": True}, slot)


def drop(store: VectorStore, collection: str) -> bool:
    """Remove the model (manifest first, so no reader is left pointing at a deleted blob)."""
    manifest = store.read_manifest(collection)
    store.write_manifest(collection, None)
    if manifest and isinstance(manifest.get("blob"), int):
        store.delete_blob(collection, manifest["blob"])
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
