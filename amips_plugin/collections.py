"""Collection-level operations shared by the CLI and the Python API: ingest, train, status."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from amips_plugin.adapters import point_ids
from amips_plugin.adapters.base import DISTANCES, MANIFEST_SLOTS, VectorStore
from amips_plugin.adapters.vector_view import for_vector
from amips_plugin.compression.artifact import decode_model, encode_model

from . import model_registry, serving_policy
from .arrays import check_vectors
from .core.errors import AmipsError, InputError, UnknownCollectionError
from .fingerprint import KeyFingerprint
from .training import FitResult, TrainConfig, fit



INGEST_BATCH = 8192  # points per store call while ingesting (one progress step each)
EXISTING_SHOWN = 5  # existing ids named when an append would overwrite them


@dataclass(frozen=True)
class Ingested:
    created: bool  # a new collection was made
    ids: np.ndarray  # the ids written, in input order
    count: int  # points in the collection afterwards


def ingest(store: VectorStore, collection: str, vectors: np.ndarray, distance: str = "dot",
           shards: int | None = None, replication_factor: int | None = None,
           scalar_quantization: bool = False, ids: np.ndarray | Sequence[Any] | None = None,
           payloads: Sequence[dict[str, Any] | None] | None = None, upsert: bool = False,
           progress: bool = False) -> Ingested:
    """Create the collection, or append to it without ever changing a point it already holds.

    Ids: `ids` when given (any Qdrant ids: unsigned integers or UUIDs, unique); otherwise 0..N−1 for
    a new collection and, for an existing one, the largest integer id + 1 onwards. (Never the point
    count: with gaps or deletions that would overwrite existing points.) Ids the collection already
    holds are refused with an InputError naming some of them, before anything is written, unless
    `upsert` is set. Appending marks the collection's model and side indexes stale before the first
    point is written, so an append that fails half-way leaves them stale rather than fresh-looking.
    """
    if distance not in DISTANCES:
        raise InputError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    vectors = check_vectors(vectors, "keys")
    if payloads is not None and len(payloads) != len(vectors):
        raise InputError(f"{len(payloads)} payloads for {len(vectors)} keys")
    try:
        info = store.info(collection)
    except UnknownCollectionError:
        info = None
    if info is not None:
        if info.dim != vectors.shape[1]:
            raise InputError(f"keys have dimension {vectors.shape[1]}, collection {collection!r} has {info.dim}")
        if info.distance != distance:
            raise InputError(f"collection {collection!r} uses distance {info.distance!r}, not {distance!r}")
    new_ids = _ids_for(store, collection if info else None, len(vectors), ids)
    if info is not None and not upsert:
        taken = store.existing(collection, new_ids)
        if len(taken):
            shown = ", ".join(str(i) for i in taken[:EXISTING_SHOWN].tolist())
            raise InputError(f"{len(taken)} of these ids already exist in {collection!r} (e.g. {shown}); nothing "
                             "was written — pass other ids, or --upsert to overwrite those points")
    if info is None:
        store.create(collection, vectors.shape[1], distance, shards, replication_factor, scalar_quantization)
    else:
        model_registry.mark_stale(store, collection)
    with tqdm(total=len(vectors), unit="pt", desc=f"ingest {collection}", disable=not progress) as bar:
        for start in range(0, len(vectors), INGEST_BATCH):
            stop = start + INGEST_BATCH
            store.upsert(collection, new_ids[start:stop], vectors[start:stop],
                         None if payloads is None else payloads[start:stop])
            bar.update(min(stop, len(vectors)) - start)
    store.finish_bulk_load(collection)
    return Ingested(info is None, new_ids, store.info(collection).count)


def _ids_for(store: VectorStore, existing: str | None, n: int, ids: np.ndarray | Sequence[Any] | None) -> np.ndarray:
    """The ids of n new points: validated given ones, or the next free integers."""
    if ids is not None:
        try:
            chosen = point_ids.as_id_array(ids)
        except ValueError as exc:
            raise InputError(f"ids: {exc}") from None
        if len(chosen) != n:
            raise InputError(f"{len(chosen)} ids for {n} keys")
        if len(np.unique(chosen)) != n:
            raise InputError("ids: the same id is given more than once")
        return chosen
    start = 0
    if existing is not None:
        for batch in store.all_ids(existing, model_registry.SCROLL_BATCH):
            numeric = batch if not point_ids.is_text(batch) else np.array(
                [int(i) for i in batch.tolist() if i.isdigit()], dtype=np.int64)
            if len(numeric):
                start = max(start, int(numeric.max()) + 1)
    return np.arange(start, start + n, dtype=np.int64)


def read_keys(store: VectorStore, collection: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """All keys in id order, scrolled in batches into one preallocated array, and their fingerprint."""
    info = store.info(collection)
    if info.count == 0:
        raise InputError(f"collection {collection!r} is empty: there is nothing to learn")
    keys = np.empty((info.count, info.dim), dtype=np.float32)
    id_batches: list[np.ndarray] = []
    fingerprint = KeyFingerprint()
    filled = 0
    for batch_ids, batch in store.scroll(collection, model_registry.SCROLL_BATCH):
        if filled + len(batch_ids) > len(keys):
            raise InputError(f"collection {collection!r} grew while it was read; try again")
        keys[filled:filled + len(batch_ids)] = batch
        id_batches.append(batch_ids)
        fingerprint.update(batch_ids, batch)
        filled += len(batch_ids)
    return keys[:filled], point_ids.concatenate(id_batches), fingerprint.result()


@dataclass(frozen=True)
class TrainedCollection:
    result: FitResult
    manifest: dict[str, Any]


@dataclass(frozen=True)
class Built:
    """What a builder hands to `build_and_publish`: the blob, its manifest fields (besides the publish
    protocol's own and the fingerprint), and whatever the caller wants back (e.g. the FitResult)."""

    blob: bytes
    fields: dict[str, Any]
    result: Any = None


def build_and_publish(store: VectorStore, collection: str, slot: str,
                      build: Callable[[np.ndarray, np.ndarray, dict[str, Any]], Built]) -> tuple[dict[str, Any], Built]:
    """The one publish workflow of everything kept alongside a collection (the model, `pq`, `router`):

    1. read the manifest the build replaces: the compare-and-swap's expected value (a manifest that does
       not validate is replaced), read *before* the keys, so a writer overlapping this one is caught;
    2. read the keys and their fingerprint (batched scroll);
    3. build from them (`build(keys, ids, fingerprint)`);
    4. growth check: when the point count changed while building (appends, other clients), the result
       no longer describes every key and is published stale;
    5. publish: blob, read back, then the manifest under the collection's manifest lock.
    Returns the new manifest and what `build` returned.
    """
    expected = model_registry.read_for_replace(store, collection, slot)
    keys, ids, fingerprint = read_keys(store, collection)
    built = build(keys, ids, fingerprint)
    grown = store.info(collection).count != len(keys)
    manifest = model_registry.publish_blob(store, collection, built.blob, {**built.fields, "fingerprint": fingerprint},
                                           slot=slot, stale=grown, expected=expected)
    return manifest, built


def train(store: VectorStore, collection: str, queries: np.ndarray, config: TrainConfig,
          progress: bool = True, on_log: Callable[[dict[str, float]], None] | None = None,
          dtype: str = "fp32") -> TrainedCollection:
    """Train on the collection's keys and a query sample; publish the model alongside the collection
    (`build_and_publish`: a compare-and-swap; committed stale when points were added meanwhile)."""

    def build(keys: np.ndarray, ids: np.ndarray, fingerprint: dict[str, Any]) -> Built:
        checked = check_vectors(queries, "queries", dim=keys.shape[1])
        result = fit(keys, checked, config, progress=progress, on_log=on_log)
        blob = encode_model(result.model.cpu(), result.metadata(keys, len(checked), fingerprint, collection=collection),
                            dtype)
        return Built(blob, model_registry.model_fields(blob, result.validation.to_dict()), result)

    manifest, built = build_and_publish(store, collection, "model", build)
    return TrainedCollection(built.result, manifest)


def import_model(store: VectorStore, collection: str, blob: bytes) -> dict[str, Any]:
    """Publish a model file's bytes as the collection's model; returns the manifest, committed stale at
    once (in the same manifest write) when the file was fit on other keys than the collection holds."""
    loaded = decode_model(blob)
    info = store.info(collection)
    if loaded.model.config.dim != info.dim:
        raise InputError(f"the model expects dimension {loaded.model.config.dim}, {collection!r} has {info.dim}")
    metadata = loaded.header.get("metadata", {})
    trained_on = metadata.get("fingerprint") or {}
    stale = trained_on != model_registry.current_fingerprint(store, collection)
    return model_registry.publish(store, collection, blob, trained_on, metadata.get("validation"), stale=stale)


def status(store: VectorStore, collection: str, verify: bool = True) -> dict[str, Any]:
    """A collection's points, model and side indexes. Each is stale when marked so by an amips write,
    when it was built on another number of keys than the collection holds (writes by other clients),
    and, with `verify`, when the keys' recomputed fingerprint differs from the one it was built on.

    A slot whose manifest does not validate is reported as {"error": reason} (the reason names the
    command that clears it), never raised: one broken manifest does not hide the rest."""
    info = store.info(collection)
    read = {slot: model_registry.read_for_replace(store, collection, slot) for slot in MANIFEST_SLOTS}
    report: dict[str, Any] = {"collection": collection, "points": info.count, "dim": info.dim,
                              "distance": info.distance, "model": None, "side_indexes": {}}
    report["policy"] = None
    manifests: dict[str, dict[str, Any] | None] = {}
    for slot, manifest in read.items():
        if isinstance(manifest, model_registry.BrokenManifest):
            entry = {"error": manifest.reason}
            if slot in ("model", "policy"):
                report[slot] = entry
            else:
                report["side_indexes"][slot] = entry
            manifest = None
        manifests[slot] = manifest
    fingerprint = (model_registry.current_fingerprint(store, collection)
                   if verify and any(manifests.values()) else None)

    def stale(manifest: dict[str, Any]) -> bool:
        built_on = (manifest.get("fingerprint") or {}).get("count")
        return model_registry.is_stale(manifest, fingerprint) or built_on != info.count

    manifest = manifests.pop("model")
    policy = manifests.pop("policy")
    if policy:
        report["policy"] = serving_policy.policy_status(policy, fingerprint, manifest)
    if manifest:
        report["model"] = {
            "version": manifest.get("version"), "stale": stale(manifest),
            "fingerprint": manifest.get("fingerprint"), "bytes": manifest.get("bytes"),
            "kind": (manifest.get("model") or {}).get("kind"), "metrics": manifest.get("metrics"),
            "created": manifest.get("created"),
        }
    for slot, side in manifests.items():  # the compressed key store ("pq") and the routed lists ("router")
        if side:
            report["side_indexes"][slot] = {"version": side.get("version"), "bytes": side.get("bytes"),
                                            "stale": stale(side)}
    return report


def status_reports(store: VectorStore, collection: str, verify: bool = True, using: str | None = None,
                   quiet_errors: bool = False) -> list[dict[str, Any]]:
    """`status` of each vector of a collection (or of `using` alone), each report naming its vector,
    plus one entry per vector amips cannot serve, with the reason. With `quiet_errors` a collection
    that cannot be read is an entry with its error, so one bad collection never hides the others."""
    try:
        if using is not None:
            return [{**status(for_vector(store, using), collection, verify), "vector": using}]
        servable, unsupported = store.vector_spaces(collection)
        return ([{**status(for_vector(store, name or None), collection, verify), "vector": name} for name in servable]
                + [{"collection": collection, "vector": name, "unsupported": why} for name, why in unsupported.items()])
    except (AmipsError, ValueError) as exc:
        if not quiet_errors:
            raise
        return [{"collection": collection, "error": str(exc)}]
