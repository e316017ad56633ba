"""Fingerprint of a key set: which keys a model was trained on (DESIGN.md §5, staleness)."""
from __future__ import annotations

import hashlib

import numpy as np

CHUNK_ROWS = 65536


def keys_fingerprint(keys: np.ndarray, ids: np.ndarray | None = None) -> dict[str, object]:
    """{"count", "dim", "sha256"} over the float32 key bytes (and ids, when given), chunk by chunk."""
    digest = hashlib.sha256()
    for start in range(0, len(keys), CHUNK_ROWS):
        digest.update(np.ascontiguousarray(keys[start:start + CHUNK_ROWS], dtype="<f4").tobytes())
    if ids is not None:
        digest.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    return {"count": int(len(keys)), "dim": int(keys.shape[1]), "sha256": digest.hexdigest()}
