"""Move a Qdrant Edge collection to another storage of a vector without losing a point (`amips advise --apply`).

The engine fixes a shard's quantization when the shard is made, so the move builds a new shard beside the
old one and swaps the folders:

    <collection>/storage-change.json   the journal: {"state": "building" | "swapping", "storage", "on_disk"}
    <collection>/shard.new/            the new shard while it is built and checked
    <collection>/shard.old/            the old one between the swap's two renames; removed after

1. Journal "building". The new shard gets the old one's own `edge_config.json` (every vector, sparse
   vector and setting as the engine wrote it) with the one vector's quantization and `on_disk` replaced,
   the old shard's payload indexes, then every point (id, all its vectors, payload) in batches; HNSW is
   built, the shard flushed and closed.
2. Both shards are read side by side in id order: the same ids and payloads, vectors equal to float32
   rounding (a cosine vector is normalised again on insert). The write stamp is copied: the points are
   the same, so models and side indexes stay fresh; a serving policy records the storage it was tuned on.
3. Journal "swapping"; rename shard → shard.old, rename shard.new → shard; remove shard.old; remove the journal.

A kill anywhere leaves a state that `recover` (run before the collection is opened) completes: while
building, the new shard is removed and the old one was never written; while swapping, the renames are
finished. The collection is whole, in the old storage or the new one, never neither.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import qdrant_edge as edge

from amips_plugin.core.errors import StoreError
from amips_plugin.core.files import atomic_write, read_bounded

JOURNAL = "storage-change.json"
NEW, OLD, LIVE = "shard.new", "shard.old", "shard"
COPY_BATCH = 1024
VECTOR_TOLERANCE = 1e-5  # float32 rounding of a re-normalised cosine vector
HALF_TOLERANCE = 2.0 ** -11  # float16's rounding, relative (10 stored mantissa bits)
ENGINE_FILES = {"wal", "segments", "edge_config.json"}  # the rest of a shard's folder is amips' (stamp, pending write)


def recover(folder: Path) -> str | None:
    """Finish or undo a storage change a kill interrupted in `folder` (a collection's); what was done, or None."""
    journal = folder / JOURNAL
    if not journal.exists():
        return None
    try:
        state = json.loads(read_bounded(journal, 4096)).get("state")
    except (OSError, ValueError, AttributeError):
        state = "building"  # a torn journal was written before any rename: the old shard is intact
    if state == "swapping":
        if (folder / NEW).is_dir():
            if (folder / LIVE).exists():
                os.rename(folder / LIVE, folder / OLD)
            os.rename(folder / NEW, folder / LIVE)
        shutil.rmtree(folder / OLD, ignore_errors=True)
        done = "finished an interrupted storage change (the collection is in its new storage)"
    else:
        shutil.rmtree(folder / NEW, ignore_errors=True)
        done = "undid an interrupted storage change (the collection is in its old storage, untouched)"
    journal.unlink()
    return done


def quantization_json(make_config: Callable[[], edge.EdgeConfig]) -> dict[str, Any]:
    """A configuration as the engine writes it to edge_config.json (made in a scratch folder and read back)."""
    with tempfile.TemporaryDirectory(prefix="amips-config-") as scratch:
        edge.EdgeShard.create(scratch, make_config()).close()
        return json.loads((Path(scratch) / "edge_config.json").read_text())


def changed_config(config: dict[str, Any], vector: str, storage: dict[str, Any], on_disk: bool,
                   index: dict[str, Any] | None = None) -> dict[str, Any]:
    """`config` (edge_config.json) with `vector`'s quantization, datatype and on_disk replaced by `storage`'s (a
    vector's parameters as the engine writes them; "": the unnamed vector); with `index` (a configuration's
    "hnsw_config" and "optimizers"), its HNSW and optimizer settings too."""
    config = json.loads(json.dumps({**config, **(index or {})}))
    params = config["vectors"][vector]
    for key in ("quantization_config", "datatype", "on_disk"):
        params.pop(key, None)
    quantization = storage.get("quantization_config")
    if storage.get("datatype"):
        params["datatype"] = storage["datatype"]
    if quantization:
        params["quantization_config"] = quantization
    elif config.get("quantization_config"):
        raise StoreError("this collection quantizes every vector by its own default configuration, which amips "
                         "cannot lift for one vector; create it anew without that default")
    if on_disk:
        params["on_disk"] = True
    return config


def _records(shard: edge.EdgeShard) -> Iterator[list[Any]]:
    offset = None
    while True:
        records, offset = shard.scroll(edge.ScrollRequest(offset=offset, limit=COPY_BATCH, with_vector=True,
                                                          with_payload=True))
        if records:
            yield records
        if offset is None:
            return


def _dense(vector: Any) -> bool:
    return isinstance(vector, list) and (not vector or not isinstance(vector[0], list))


def _same_vector(a: Any, b: Any, half: bool = False) -> bool:
    """Equal within float32 rounding; with `half` (b stored as float16), within float16's too (a relative
    HALF_TOLERANCE)."""
    if _dense(a) and _dense(b):
        return len(a) == len(b) and bool(np.allclose(a, b, rtol=HALF_TOLERANCE if half else 0, atol=VECTOR_TOLERANCE))
    if isinstance(a, edge.SparseVector) and isinstance(b, edge.SparseVector):
        return list(a.indices) == list(b.indices) and bool(np.allclose(a.values, b.values, rtol=0,
                                                                       atol=VECTOR_TOLERANCE))
    if isinstance(a, list) and isinstance(b, list):  # a multivector
        return len(a) == len(b) and all(_same_vector(x, y, half) for x, y in zip(a, b))
    return False


def _same_point(a: Any, b: Any, half: bool = False) -> bool:
    if a.id != b.id or json.dumps(a.payload, sort_keys=True) != json.dumps(b.payload, sort_keys=True):
        return False
    va, vb = a.vector, b.vector
    if isinstance(va, dict) and isinstance(vb, dict):
        return va.keys() == vb.keys() and all(_same_vector(va[k], vb[k], half) for k in va)
    return _same_vector(va, vb, half)


def copy_points(source: edge.EdgeShard, target: edge.EdgeShard, progress: Callable[[int], None]) -> int:
    """Every point of `source` (vectors and payload) into `target`, and its payload indexes; the count copied."""
    for field, index in (source.info().payload_schema or {}).items():
        target.update(edge.UpdateOperation.create_field_index(field, index.params or index.data_type))
    copied = 0
    for records in _records(source):
        target.update(edge.UpdateOperation.upsert_points(
            [edge.Point(r.id, r.vector, r.payload) for r in records]))
        copied += len(records)
        progress(len(records))
    return copied


def check_copy(source: edge.EdgeShard, target: edge.EdgeShard, collection: str, half: bool = False) -> int:
    """StoreError unless both shards hold the same points (ids, payloads, vectors; `half`: the target stores them
    as float16); the count checked."""
    checked = 0
    old, new = _records(source), _records(target)
    for a, b in zip(old, new):
        if len(a) != len(b) or not all(_same_point(x, y, half) for x, y in zip(a, b)):
            raise StoreError(f"the copy of {collection!r} differs from it near point {a[0].id}; the collection was "
                             "left as it was")
        checked += len(a)
    if next(old, None) is not None or next(new, None) is not None:
        raise StoreError(f"the copy of {collection!r} holds another number of points; "
                         "the collection was left as it was")
    return checked


def write_journal(folder: Path, state: str, storage: str, on_disk: bool) -> None:
    atomic_write(folder / JOURNAL, json.dumps({"state": state, "storage": storage, "on_disk": on_disk}).encode("ascii"))


def swap(folder: Path, storage: str, on_disk: bool) -> None:
    """Step 3: the new shard in place of the old, the old removed (journal "swapping" first)."""
    for name in os.listdir(folder / LIVE):  # amips' own files in the shard folder travel with the points
        if name not in ENGINE_FILES and (folder / LIVE / name).is_file() and not (folder / NEW / name).exists():
            shutil.copy2(folder / LIVE / name, folder / NEW / name)
    write_journal(folder, "swapping", storage, on_disk)
    os.rename(folder / LIVE, folder / OLD)
    os.rename(folder / NEW, folder / LIVE)
    shutil.rmtree(folder / OLD)
    (folder / JOURNAL).unlink()
