"""Collection-level operations shared by the CLI and the Python API: ingest, train, status."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from amips_plugin.core import point_ids
from amips_plugin.adapters.base import DISTANCES, MANIFEST_SLOTS, VectorStore
from amips_plugin.adapters.vector_view import for_vector

from . import model_registry, pending_writes, serving_policy
from .arrays import check_vectors
from .core.errors import AmipsError, ArtifactError, InputError, UnknownCollectionError
from .fingerprint import KeyFingerprint
from .freshness import stale_reason
from .core.manifest_schema import (BlobManifestSchema, ManifestSchema, ModelManifestSchema, PolicyManifestSchema,
                                   as_schema, fix_command)

if TYPE_CHECKING:  # training code imports torch: loaded where a model is trained or read
    from .train_config import TrainConfig
    from .training import FitResult

log = logging.getLogger("amips")
INGEST_BATCH = 8192  # points per store call while ingesting (one progress step each)
EXISTING_SHOWN = 5  # existing ids named when an append would overwrite them
INT64_END = 2**63  # ids ingest numbers itself (the next free integers) are int64


@dataclass(frozen=True)
class Ingested:
    created: bool  # a new collection was made
    ids: np.ndarray  # the ids written, in input order
    count: int  # points in the collection afterwards
    resumed: int | None = None  # an interrupted append of the same input finished: how many it had written


def ingest(store: VectorStore, collection: str, vectors: np.ndarray, distance: str = "dot",
           shards: int | None = None, replication_factor: int | None = None,
           quantization: str = "none", ids: np.ndarray | Sequence[Any] | None = None,
           payloads: Sequence[dict[str, Any] | None] | None = None, upsert: bool = False,
           progress: bool = False, on_disk: bool = False) -> Ingested:
    """Create the collection (stored as `quantization` and `on_disk` say: adapters/storage.py), or append to
    it without ever changing a point it already holds.

    Ids: `ids` when given (any Qdrant ids: unsigned integers or UUIDs, unique); otherwise 0..N−1 for
    a new collection and, for an existing one, the largest integer id + 1 onwards. (Never the point
    count: with gaps or deletions that would overwrite existing points.) Ids the collection already
    holds are refused with an InputError naming some of them, before anything is written, unless
    `upsert` is set. Appending marks the collection's model and side indexes stale before the first
    point is written, so an append that fails half-way leaves them stale rather than fresh-looking.
    An append interrupted (killed, or a store error: the error says how many points were written) is
    finished by running it again on the same input, which writes the same points under the same ids
    (`pending_writes`), never a second copy.
    """
    if distance not in DISTANCES:
        raise InputError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    vectors = check_vectors(vectors, "keys")
    if payloads is not None:
        _check_payloads(payloads, len(vectors))
    try:
        info = store.info(collection)
    except UnknownCollectionError:
        info = None
    if info is not None:
        if info.dim != vectors.shape[1]:
            raise InputError(f"keys have dimension {vectors.shape[1]}, collection {collection!r} has {info.dim}")
        if info.distance != distance:
            raise InputError(f"collection {collection!r} uses distance {info.distance!r}, not {distance!r}")
        stored = store.storage(collection)
        if quantization != "none" and stored is not None and stored[0] != quantization:
            raise InputError(f"collection {collection!r} is stored as {stored[0]}; a quantization is chosen when a "
                             "collection is created (nothing was written)")
    given = None if ids is None else _ids_for(store, None, len(vectors), ids)
    digest = pending_writes.input_digest(vectors, given, payloads)
    pending = pending_writes.PendingWrite.parse(store.read_pending_write(collection)) if info is not None else None
    resumed: int | None = None  # points an interrupted run of this same append had written
    if pending is not None and pending.sha256 == digest:  # the same ids, overwritten with the same points
        new_ids = pending.ids(given)
        resumed = len(store.existing(collection, new_ids))
    else:
        if pending is not None:
            log.warning("amips: %s to %r was interrupted and is not this one; its points stay as written",
                        pending.describe(), collection)
        new_ids = given if given is not None else _ids_for(store, collection if info else None, len(vectors), None)
    if info is not None and not upsert and resumed is None:
        taken = store.existing(collection, new_ids)
        if len(taken):
            shown = ", ".join(str(i) for i in taken[:EXISTING_SHOWN].tolist())
            raise InputError(f"{len(taken)} of these ids already exist in {collection!r} (e.g. {shown}); nothing "
                             "was written — pass other ids, or --upsert to overwrite those points")
    # before anything is written; an append's optimizer may rewrite the points already there too
    store.check_room(f"{len(vectors):,} points to {collection!r}",
                     int(vectors.nbytes) + (4 * info.count * info.dim if info is not None else 0))
    if info is None:
        store.create(collection, vectors.shape[1], distance, shards, replication_factor, quantization, on_disk=on_disk)
    else:
        model_registry.mark_stale(store, collection)
    record = pending_writes.PendingWrite(digest, len(vectors), None if given is not None else int(new_ids[0]))
    store.write_pending_write(collection, record.as_record())
    written = 0
    with tqdm(total=len(vectors), unit="pt", desc=f"ingest {collection}", disable=not progress) as bar:
        for start in range(0, len(vectors), INGEST_BATCH):
            stop = start + INGEST_BATCH
            try:
                store.upsert(collection, new_ids[start:stop], vectors[start:stop],
                             None if payloads is None else payloads[start:stop])
            except AmipsError as exc:
                raise type(exc)(f"{written:,} of {len(vectors):,} points written ({_span(new_ids[:written])}) when "
                                f"the write failed: {exc} — run the same ingest again to finish it") from None
            written = min(stop, len(vectors))
            bar.update(written - start)
    store.finish_bulk_load(collection)
    store.write_pending_write(collection, None)
    return Ingested(info is None, new_ids, store.info(collection).count, resumed)


def _span(ids: np.ndarray) -> str:
    """How a message names written ids: "ids a..b" for a run of integers, else how many."""
    if not len(ids):
        return "none"
    if not point_ids.is_text(ids) and np.all(np.diff(ids) == 1):
        return f"ids {ids[0]}..{ids[-1]}"
    return f"{len(ids):,} ids"


def _check_payloads(payloads: Sequence[dict[str, Any] | None], n: int) -> None:
    """InputError, before anything is created or written, unless there is one payload per key, each a dict
    (or None) of JSON values (numpy scalars included) without NaN or infinity: Qdrant stores no other, and
    Edge refuses them mid-write, after the collection was made."""
    if len(payloads) != n:
        raise InputError(f"{len(payloads)} payloads for {n} keys")
    for index, payload in enumerate(payloads):
        if payload is not None and not isinstance(payload, dict):
            raise InputError(f"payloads[{index}] is a {type(payload).__name__}, not a dict or None")
        try:
            json.dumps(payload, allow_nan=False, default=_json_scalar)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InputError(f"payloads[{index}] is not storable as JSON ({exc})") from None


def _json_scalar(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (for the JSON check); TypeError for anything else."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a {type(value).__name__} is not a JSON value")


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
    start = 0 if existing is None else _largest_integer_id(store, existing) + 1
    if start + n > INT64_END:
        raise InputError(f"ids: {existing!r} already holds integer id {start - 1}, so the next {n:,} ids would pass "
                         f"2**63-1, the largest id ingest numbers itself; pass --ids (or ids=) for the new points")
    return np.arange(start, start + n, dtype=np.int64)


def _largest_integer_id(store: VectorStore, collection: str) -> int:
    """The collection's largest integer point id (up to 2**64-1, held as text beyond int64), or -1 if none."""
    largest = -1
    for batch in store.all_ids(collection, model_registry.SCROLL_BATCH):
        if point_ids.is_text(batch):
            largest = max([largest, *(int(i) for i in batch.tolist() if i.isdigit())])
        elif len(batch):
            largest = max(largest, int(batch.max()))
    return largest


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
       not validate is replaced), and the collection's write stamp, both *before* the keys, so a writer
       overlapping this one is caught (a write bumps the stamp's generation before it writes);
    2. read the keys and their fingerprint (batched scroll);
    3. build from them (`build(keys, ids, fingerprint)`);
    4. growth check: when the point count changed while building (appends, other clients), or the stamp
       did (checked again under the manifest lock), the result no longer describes every key and is
       published stale;
    5. publish: blob, read back, then the manifest under the collection's manifest lock.
    Returns the new manifest and what `build` returned.
    """
    expected = model_registry.read_for_replace(store, collection, slot)
    stamp = store.write_stamp(collection, create=True)
    keys, ids, fingerprint = read_keys(store, collection)
    built = build(keys, ids, fingerprint)
    grown = store.info(collection).count != len(keys)
    manifest = model_registry.publish_blob(store, collection, built.blob, {**built.fields, "fingerprint": fingerprint},
                                           slot=slot, stale=grown, expected=expected, bound_to=stamp)
    return manifest, built


def train(store: VectorStore, collection: str, queries: np.ndarray, config: TrainConfig,
          progress: bool = True, on_log: Callable[[dict[str, float]], None] | None = None,
          dtype: str = "fp32") -> TrainedCollection:
    """Train on the collection's keys and a query sample; publish the model alongside the collection
    (`build_and_publish`: a compare-and-swap; committed stale when points were added meanwhile)."""

    from amips_plugin.model_artifact import encode_model

    from .training import fit

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
    from amips_plugin.model_artifact import decode_model

    loaded = decode_model(blob)
    info = store.info(collection)
    if loaded.model.config.dim != info.dim:
        raise InputError(f"the model expects dimension {loaded.model.config.dim}, {collection!r} has {info.dim}")
    metadata = loaded.header.get("metadata", {})
    trained_on = metadata.get("fingerprint") or {}
    stamp = store.write_stamp(collection, create=True)  # before the keys are read for the comparison
    stale = trained_on != model_registry.current_fingerprint(store, collection)
    return model_registry.publish(store, collection, blob, trained_on, metadata.get("validation"), stale=stale,
                                  bound_to=stamp)


def status(store: VectorStore, collection: str, verify: bool = True) -> dict[str, Any]:
    """A collection's points, model and side indexes, each stale or not by the one rule of
    amips_plugin/freshness.py (with `verify`, the keys' fingerprint is recomputed and compared too).

    A slot whose manifest does not validate is reported as {"error": reason} (the reason names the
    command that clears it), never raised: one broken manifest does not hide the rest."""
    info = store.info(collection)
    read = {slot: model_registry.read_for_replace(store, collection, slot) for slot in MANIFEST_SLOTS}
    stored = store.storage(collection)
    report: dict[str, Any] = {"collection": collection, "points": info.count, "dim": info.dim,
                              "distance": info.distance, "model": None, "side_indexes": {},
                              "storage": None if stored is None else {"quantization": stored[0], "on_disk": stored[1]}}
    report["policy"] = None
    manifests: dict[str, ManifestSchema | None] = {}
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
    stamp = store.write_stamp(collection)

    manifest = as_schema(manifests.pop("model"), ModelManifestSchema)
    model_sha256 = manifest.sha256 if manifest else None  # a policy reading σ̂ is stale once the model is another

    def stale(artifact: ManifestSchema) -> bool:
        return stale_reason(artifact, stamp, info.count, fingerprint, stored, model_sha256) is not None

    policy = as_schema(manifests.pop("policy"), PolicyManifestSchema)
    if policy:
        report["policy"] = serving_policy.policy_status(policy, stale(policy))
    if manifest:
        report["model"] = {
            "version": manifest.version, "stale": stale(manifest),
            "fingerprint": manifest.fingerprint.to_dict() if manifest.fingerprint else None, "bytes": manifest.bytes,
            "kind": manifest.model.kind, "metrics": manifest.metrics, "created": manifest.created,
        }
        _note_blob_problem(report["model"], store, collection, "model", manifest, verify)
    for slot, read_side in manifests.items():  # the compressed key store ("pq") and the routed lists ("router")
        side = as_schema(read_side, BlobManifestSchema)
        if side:
            report["side_indexes"][slot] = {"version": side.version, "bytes": side.bytes, "stale": stale(side)}
            _note_blob_problem(report["side_indexes"][slot], store, collection, slot, side, verify)
    return report


def _note_blob_problem(entry: dict[str, Any], store: VectorStore, collection: str, slot: str,
                       manifest: BlobManifestSchema, verify: bool) -> None:
    """Set entry["error"] when the blob `manifest` names cannot be loaded: missing or over its size, and with
    `verify` truncated or not matching its checksum. Even without `verify` the blob is read (bounded by the
    manifest's size), as a store can tell no more cheaply: status never calls fresh what no search can load."""
    try:
        if verify:
            model_registry.read_verified_blob(store, collection, manifest)
        else:
            store.read_blob(collection, manifest.blob, manifest.bytes)
    except ArtifactError as exc:
        entry["error"] = f"{exc}; clear it with `{fix_command(slot, collection)}` and build it again"


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
