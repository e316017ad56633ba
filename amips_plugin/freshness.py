"""When an artifact kept alongside a collection still describes its points: one rule for the model, the
side indexes and the serving policy, read by the query path and by `amips status` alike (docs/design.md §5).

An artifact (its manifest) is stale when
1. an amips write marked it so (`model_registry.mark_stale`: appends mark before they write), or
2. it is bound to other points: the collection's write stamp (`adapters.base.WriteStamp`: a random id
   made with the collection, and a generation every amips write bumps first) is not the one recorded
   at build time (`bound_to`) — the collection was re-created, the manifest was copied from another
   collection, or points were written since the build read them, or
3. it was built on another number of keys than the collection holds (writes by other clients, which
   cannot bump the stamp, whenever they changed the count), or
4. asked to verify (`status` without --no-verify), the keys' recomputed fingerprint differs, or
5. it records the storage of the vector it was measured on (a serving policy: its timings and
   recall depend on the quantization) and the vector is stored otherwise now (`advise --apply`, a
   server's `update_collection`), or
6. it records the SHA-256 of the model it reads (a serving policy whose certificate reads σ̂) and the
   model stored now is another one, or none.

Rules 1–3 cost nothing per query beyond the stamp (Edge keeps it in memory: its shard is this process's alone).
"""
from __future__ import annotations

from typing import Any

from amips_plugin.adapters.base import WriteStamp

from .core.manifest_schema import ManifestSchema, PolicyManifestSchema

NOT_CHECKED = object()  # `stale_reason(model_sha256=...)`: the model is not looked at


def storage_key(storage: tuple[str, bool]) -> str:
    """A vector's storage as an artifact records it: the quantization's name, "+on_disk" when originals are on disk."""
    return storage[0] + ("+on_disk" if storage[1] else "")


def stale_reason(manifest: ManifestSchema, stamp: WriteStamp | None, count: int | None,
                 fingerprint: dict[str, Any] | None = None, storage: tuple[str, bool] | None = None,
                 model_sha256: str | None | object = NOT_CHECKED) -> str | None:
    """Why the artifact of `manifest` no longer describes the collection's points, or None while it does.

    `stamp`: the collection's current write stamp (None where the store keeps none: then an artifact
    bound to a stamp is stale, one bound to none is judged by the other rules); `count`: its point count
    (None: not checked); `fingerprint`: the keys' fingerprint, recomputed (None: not checked); `storage`:
    the vector's storage now (`VectorStore.storage`; None: not checked or unknown); `model_sha256`: the
    SHA-256 of the collection's model now (None: it has none; NOT_CHECKED: not looked at)."""
    bound, keys = manifest.bound_to, manifest.fingerprint
    if manifest.stale:
        return "the keys changed since it was built"
    if (None if bound is None else WriteStamp(bound.collection, bound.generation)) != stamp:
        return ("it was built for other points (the collection was re-created, written since, or the "
                "artifact copied from elsewhere)")
    built_on = None if keys is None else keys.count
    if count is not None and built_on != count:
        return f"it was built on {built_on} keys, the collection has {count}"
    if fingerprint is not None and fingerprint != (None if keys is None else keys.to_dict()):
        return "the keys' fingerprint differs from the one it was built on"
    if not isinstance(manifest, PolicyManifestSchema):  # rules 5 and 6 are about what a serving policy records
        return None
    measured_on, reads = manifest.storage, manifest.model_sha256
    if storage is not None and measured_on is not None and measured_on != storage_key(storage):
        return f"it was measured on {measured_on} storage; the vector is stored as {storage_key(storage)} now"
    if reads is not None and model_sha256 is not NOT_CHECKED and model_sha256 != reads:
        return "the model it reads changed since it was measured"
    return None
