"""Build the compressed key store (`amips pq-build`): tune-time code, kept off the query path.

The collection's keys are quantized by anisotropic (score-aware) PQ (compression/anisotropic_pq.py) and
published alongside it (`collection_ops.build_and_publish`, like the model); amips_plugin/pq_store.py reads
it back at query time.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from amips_plugin.adapters.base import VectorStore
from amips_plugin.compression.anisotropic_pq import DEFAULT_RELATIVE_THRESHOLD, anisotropic_pq, score_threshold
from amips_plugin.pq_store import SLOT, KeyStore, encode_key_store

from .collection_ops import Built, build_and_publish


def build(store: VectorStore, collection: str, subspaces: int,
          relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD, progress: bool = False) -> dict[str, Any]:
    """Quantize the collection's keys and publish the codes alongside it; returns the manifest.

    relative_threshold τ sets the anisotropic threshold T = τ·max‖x‖ (for unit queries); the
    manifest records both.
    """

    def quantize(keys: np.ndarray, ids: np.ndarray, fingerprint: dict[str, Any]) -> Built:
        scored, _ = anisotropic_pq(keys, subspaces, relative_threshold, progress=progress)
        fields = {"subspaces": subspaces, "bits_per_key": scored.bits_per_key,
                  "relative_threshold": relative_threshold,
                  "score_threshold": score_threshold(keys, relative_threshold),
                  "keys_fp32_bytes": int(keys.nbytes)}
        return Built(encode_key_store(KeyStore(scored, ids), {**fields, "fingerprint": fingerprint}), fields)

    return build_and_publish(store, collection, SLOT, quantize)[0]
