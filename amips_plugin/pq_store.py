"""The compressed key store: anisotropic PQ codes kept alongside the collection, as a candidate stage.

Stored like the model (blob first, then the manifest in the "pq" slot) in the same checksummed
container, kind "amips-pq": codebooks (fp32), codes (uint8, N×m) and the point ids (int64). At query
time the codes give the top candidates by asymmetric score; the caller rescores them exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from amips_plugin.adapters.base import VectorStore
from amips_plugin.compression.anisotropic_pq import ProductCodes
from amips_plugin.compression.artifact import pack, unpack
from amips_plugin.compression.quantization import encode_exact

from . import model_registry
from .core import point_ids
from .core.errors import ArtifactError
from .core.manifest_schema import BlobManifestSchema

KIND = "amips-pq"
SLOT = "pq"
DESCRIPTION = "compressed key store"  # how searches and `status` name it
BUILD_COMMAND = "pq-build"
SCORE_BUDGET = 1 << 22  # asymmetric scores per chunk: ~20 bytes each with the top-k's scratch (80 MiB)


@dataclass(frozen=True)
class KeyStore:
    codes: ProductCodes
    ids: np.ndarray  # (N,) the store's point id of each coded key (int64 or text, `core.point_ids`)

    @property
    def dim(self) -> int:
        """The dimension of the keys it codes: m subspaces × d/m."""
        return self.codes.codebooks.shape[0] * self.codes.codebooks.shape[2]

    def candidates(self, probes: np.ndarray, limit: int) -> list[np.ndarray]:
        """Point ids of the top-`limit` keys by asymmetric score, per probe row; scored in row chunks of at
        most SCORE_BUDGET scores, so the (rows × N) score matrix is bounded for any batch size."""
        step = max(1, SCORE_BUDGET // len(self.ids))
        return [row for start in range(0, len(probes), step)
                for row in self.ids[self.codes.search(probes[start:start + step], limit)]]


def encode_key_store(key_store: KeyStore, metadata: dict[str, Any]) -> bytes:
    id_name, id_tensor = point_ids.encode_for_artifact(key_store.ids)
    tensors = [("codebooks", encode_exact(key_store.codes.codebooks.astype(np.float32))),
               ("codes", encode_exact(key_store.codes.codes.astype(np.uint8))),
               (id_name, encode_exact(id_tensor))]
    return pack(KIND, {"metadata": metadata}, tensors)


def decode_key_store(blob: bytes) -> KeyStore:
    _, tensors = unpack(blob, KIND)
    try:
        codebooks, codes, ids = tensors["codebooks"], tensors["codes"], point_ids.decode_from_artifact(tensors)
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"compressed key store lacks {exc}") from None
    if codebooks.ndim != 3 or codes.shape != (len(ids), codebooks.shape[0]) or codebooks.shape[1] != 256:
        raise ArtifactError("compressed key store's codes, codebooks and ids do not fit together")
    if not len(ids) or not point_ids.all_valid(ids) or 0 in codebooks.shape:
        raise ArtifactError("compressed key store holds no keys, or negative point ids")
    return KeyStore(ProductCodes(codebooks, codes), ids)


def load(store: VectorStore, collection: str) -> tuple[KeyStore, BlobManifestSchema] | None:
    return model_registry.load_side_index(store, collection, SLOT, decode_key_store, DESCRIPTION)
