"""Fingerprint of a key set: which keys a model was trained on (docs/design.md §5, staleness).

SHA-256 over (id, vector) in the store's scroll order (ids as `core.point_ids.id_bytes`, vectors
float32 little-endian), fed batch by batch so a store can be fingerprinted while it is scrolled. Keys
read from a file get ids 0..N−1, the ids `amips ingest` gives them, so a file and the collection made
from it agree.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from amips_plugin.core.point_ids import id_bytes
from amips_plugin.core.errors import ArtifactError


class KeyFingerprint:
    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._count = 0
        self._dim: int | None = None

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._digest.update(id_bytes(np.asarray(ids)))
        self._digest.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._count += len(ids)
        self._dim = int(vectors.shape[1])

    def result(self) -> dict[str, Any]:
        return {"count": self._count, "dim": self._dim, "sha256": self._digest.hexdigest()}


def keys_fingerprint(keys: np.ndarray, ids: np.ndarray | None = None) -> dict[str, Any]:
    fingerprint = KeyFingerprint()
    fingerprint.update(np.arange(len(keys)) if ids is None else ids, keys)
    return fingerprint.result()


def check_ids_cover(ids: np.ndarray, count: int | None, what: str) -> None:
    """ArtifactError unless `ids` name `count` points (as many as the keys it was built on: its manifest's
    fingerprint), each once, as an index built from those keys does (a planted one could name millions for a
    small collection)."""
    if len(ids) != count:
        raise ArtifactError(f"the {what} holds {len(ids):,} point ids, its manifest says it was built on {count} keys")
    if len(np.unique(ids)) != len(ids):
        raise ArtifactError(f"the {what} names the same point id more than once")
