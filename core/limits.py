"""Bounds on everything amips reads from the store or from a caller, decided before allocating.

Stored state (manifests, blobs, sidecar chunks, `.npy` files) is untrusted input: anyone who can
write a collection's metadata can write it. Each number here is an upper bound a well-formed
object of that kind never reaches in practice, so that a hostile one is refused by comparing
declared sizes, before any memory is taken for it.
"""
from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30

MAX_MANIFEST_BYTES = 1 * MIB  # a manifest's JSON (file or metadata entry); real ones are < 4 KiB
MAX_BLOB_BYTES = 1 * GIB  # a stored (compressed) artifact; the read is bounded further by the manifest's "bytes"
MAX_BODY_BYTES = 1 * GIB  # an artifact's decompressed body (header + tensors)
MAX_HEADER_BYTES = 16 * MIB  # an artifact's JSON header
MAX_TENSORS = 4096  # entries in an artifact's tensor table
MAX_TENSOR_RANK = 8
MAX_DIMENSION = 1 << 16  # vector dimension d of a model
MAX_WIDTH = 1 << 16  # hidden width / rank of a model
MAX_DEPTH = 64
MAX_POINTS = 1 << 26  # smoothmax's learned points
MAX_HEADS = 1 << 16
MAX_VERSION = 1 << 53
MAX_BLOB_ID = 1 << 40  # blob ids are 40 random bits (model_registry.BLOB_ID_BITS)
MAX_POINT_COUNT = 1 << 40

MAX_LIMIT = 10_000  # results per query
MAX_CANDIDATES = 100_000  # prefetch candidates per probe (route: fine lists)
MAX_HNSW_EF = 100_000
MAX_OVERSAMPLING = 1_000.0
MAX_QUERY_NORM = 1e18  # ‖x‖² must stay far below float32's 3.4e38 in every inner product
