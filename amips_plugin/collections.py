"""Collection-level operations shared by the CLI and the Python API: ingest, train, status."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from adapters.base import DISTANCES, MANIFEST_SLOTS, VectorStore
from compression.artifact import encode_model

from . import model_registry, serving_policy
from .arrays import check_vectors
from .errors import InputError, UnknownCollectionError
from .fingerprint import KeyFingerprint
from .training import FitResult, TrainConfig, fit



def ingest(store: VectorStore, collection: str, vectors: np.ndarray, distance: str = "dot",
           shards: int | None = None, replication_factor: int | None = None,
           scalar_quantization: bool = False) -> tuple[int, int]:
    """Create the collection (ids 0..N−1) or append to it (ids continue after its point count).

    Appending marks the collection's model stale, before the first point is written, so an append
    that fails or is interrupted half-way leaves the model stale rather than fresh-looking.
    Returns (first id, new point count).
    """
    if distance not in DISTANCES:
        raise InputError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    vectors = check_vectors(vectors, "keys")
    try:
        info = store.info(collection)
    except UnknownCollectionError:
        store.create(collection, vectors.shape[1], distance, shards, replication_factor, scalar_quantization)
        start = 0
    else:
        if info.dim != vectors.shape[1]:
            raise InputError(f"keys have dimension {vectors.shape[1]}, collection {collection!r} has {info.dim}")
        if info.distance != distance:
            raise InputError(f"collection {collection!r} uses distance {info.distance!r}, not {distance!r}")
        start = info.count
        model_registry.mark_stale(store, collection)
    store.upsert(collection, np.arange(start, start + len(vectors), dtype=np.int64), vectors)
    store.finish_bulk_load(collection)
    return start, start + len(vectors)


def read_keys(store: VectorStore, collection: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """All keys in id order, scrolled in batches into one preallocated array, and their fingerprint."""
    info = store.info(collection)
    if info.count == 0:
        raise InputError(f"collection {collection!r} is empty: there is nothing to learn")
    keys = np.empty((info.count, info.dim), dtype=np.float32)
    ids = np.empty(info.count, dtype=np.int64)
    fingerprint = KeyFingerprint()
    filled = 0
    for batch_ids, batch in store.scroll(collection, model_registry.SCROLL_BATCH):
        if filled + len(batch_ids) > len(keys):
            raise InputError(f"collection {collection!r} grew while it was read; try again")
        keys[filled:filled + len(batch_ids)], ids[filled:filled + len(batch_ids)] = batch, batch_ids
        fingerprint.update(batch_ids, batch)
        filled += len(batch_ids)
    return keys[:filled], ids[:filled], fingerprint.result()


@dataclass(frozen=True)
class TrainedCollection:
    result: FitResult
    manifest: dict[str, Any]


def train(store: VectorStore, collection: str, queries: np.ndarray, config: TrainConfig,
          progress: bool = True, on_log: Callable[[dict[str, float]], None] | None = None) -> TrainedCollection:
    """Train on the collection's keys and a query sample; publish the model alongside the collection.

    The publish is a compare-and-swap against the manifest read before the keys were: if another
    trainer published (or the model was dropped) meanwhile, ConcurrentPublishError and nothing is
    changed. If points were added while training ran, the new model is committed stale.
    """
    replaces = store.read_manifest(collection)
    keys, _, fingerprint = read_keys(store, collection)
    queries = check_vectors(queries, "queries", dim=keys.shape[1])
    result = fit(keys, queries, config, progress=progress, on_log=on_log)
    model = result.model.cpu()
    metadata = {"training": config.to_dict(), "steps_run": result.steps_run, "fingerprint": fingerprint,
                "validation": result.validation.to_dict(), "params": model.num_parameters(),
                "num_keys": len(keys), "collection": collection}
    blob = encode_model(model, metadata)
    grown = store.info(collection).count != len(keys)
    manifest = model_registry.publish(store, collection, blob, fingerprint, metrics=result.validation.to_dict(),
                                      stale=grown, expected=replaces)
    return TrainedCollection(result, manifest)


def status(store: VectorStore, collection: str, verify: bool = True) -> dict[str, Any]:
    """A collection's points and model; with `verify`, recompute the keys' fingerprint for staleness."""
    info = store.info(collection)
    manifests = {slot: store.read_manifest(collection, slot) for slot in MANIFEST_SLOTS}
    report: dict[str, Any] = {"collection": collection, "points": info.count, "dim": info.dim,
                              "distance": info.distance, "model": None, "side_indexes": {}}
    fingerprint = (model_registry.current_fingerprint(store, collection)
                   if verify and any(manifests.values()) else None)
    manifest = manifests.pop("model")
    report["policy"] = serving_policy.policy_status(manifests.pop("policy"), fingerprint, manifest)
    if manifest:
        report["model"] = {
            "version": manifest.get("version"), "stale": model_registry.is_stale(manifest, fingerprint),
            "fingerprint": manifest.get("fingerprint"), "bytes": manifest.get("bytes"),
            "kind": (manifest.get("model") or {}).get("kind"), "metrics": manifest.get("metrics"),
            "created": manifest.get("created"),
        }
    for slot, side in manifests.items():  # the compressed key store ("pq") and the routed lists ("router")
        if side:
            report["side_indexes"][slot] = {"version": side.get("version"), "bytes": side.get("bytes"),
                                            "stale": model_registry.is_stale(side, fingerprint)}
    return report
