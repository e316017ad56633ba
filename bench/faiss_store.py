"""FAISS indexes for inner-product search, each reporting its own cost (docs/design.md §2).

Cost is counted in inner-product equivalents (IPE): one IPE is one d-dimensional inner product.
The indexes here count exactly what they compute:

  * `FlatIndex`: every key, N IPE per query (brute force, the ground truth);
  * `IVFIndex` (IVF-Flat): the coarse step scores all `nlist` centroids, then the keys of the
    `nprobe` best lists are scored exactly: nlist + Σ |list| IPE (FAISS `indexIVF_stats.ndis`);
  * `HNSWIndex`: the graph walk's distance computations (FAISS `hnsw_stats.ndis`).

`IVFIndex.search_lists` scans lists chosen by the caller (a learned router) instead of the
nearest centroids (FAISS `ivf_tools.search_preassigned`); the caller adds its own routing cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned, search_preassigned


@dataclass(frozen=True)
class Hits:
    """Top-k ids and scores per query (−1 / −inf pad short rows) and the mean IPE per query."""

    ids: np.ndarray
    scores: np.ndarray
    ipe: float


def _as_f32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


class FlatIndex:
    """Exact inner-product search (FAISS `IndexFlatIP`)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.index = faiss.IndexFlatIP(keys.shape[1])
        self.index.add(_as_f32(keys))

    def search(self, queries: np.ndarray, k: int) -> Hits:
        scores, ids = self.index.search(_as_f32(queries), k)
        return Hits(ids, scores, float(self.index.ntotal))


class IVFIndex:
    """IVF-Flat under the inner product. Lists come from k-means (FAISS) or from the caller.

    `assignment` (one list id per key) with `centroids` builds the index over a given partition,
    e.g. the fine lists of a `TwoLevelPartition` (FAISS `ivf_tools.add_preassigned`); without them FAISS
    trains `nlist` lists.
    """

    def __init__(self, keys: np.ndarray, nlist: int, seed: int = 0,
                 centroids: np.ndarray | None = None, assignment: np.ndarray | None = None) -> None:
        dim = keys.shape[1]
        keys = _as_f32(keys)
        self.quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if centroids is None:
            self.index.cp.seed = seed
            self.index.train(keys)
            self.index.add(keys)
        else:
            if assignment is None or len(centroids) != nlist:
                raise ValueError("a given partition needs nlist centroids and one list id per key")
            self.quantizer.add(_as_f32(centroids))
            self.index.is_trained = True
            add_preassigned(self.index, keys, np.ascontiguousarray(assignment, dtype=np.int64))  # ids 0..N-1
        invlists = self.index.invlists
        assert invlists is not None  # an IndexIVFFlat always owns its inverted lists
        self.list_sizes = np.array([invlists.list_size(i) for i in range(nlist)], dtype=np.int64)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @property
    def centroids(self) -> np.ndarray:
        return self.quantizer.reconstruct_n(0, self.nlist)

    def search(self, queries: np.ndarray, k: int, nprobe: int) -> Hits:
        """Nearest-centroid routing: nlist + Σ|probed lists| IPE per query."""
        self.index.nprobe = nprobe
        stats = faiss.cvar.indexIVF_stats  # type: ignore[attr-defined]  # the faiss stub lists no cvar globals
        stats.reset()
        scores, ids = self.index.search(_as_f32(queries), k)
        return Hits(ids, scores, self.nlist + stats.ndis / max(len(queries), 1))

    def search_lists(self, queries: np.ndarray, k: int, lists: np.ndarray) -> Hits:
        """Scan the given lists (B, p) exactly; Σ|lists| IPE per query (routing cost not included)."""
        lists = np.ascontiguousarray(lists, dtype=np.int64)
        stats = faiss.cvar.indexIVF_stats  # type: ignore[attr-defined]  # the faiss stub lists no cvar globals
        stats.reset()
        self.index.nprobe = lists.shape[1]
        scores, ids = search_preassigned(self.index, _as_f32(queries), k, lists)
        return Hits(ids, scores, stats.ndis / max(len(queries), 1))


class HNSWIndex:
    """HNSW graph under the inner product (FAISS `IndexHNSWFlat`, M links per node)."""

    def __init__(self, keys: np.ndarray, links: int = 32, ef_construction: int = 100) -> None:
        self.index = faiss.IndexHNSWFlat(keys.shape[1], links, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(_as_f32(keys))

    def search(self, queries: np.ndarray, k: int, ef_search: int) -> Hits:
        self.index.hnsw.efSearch = max(ef_search, k)
        stats = faiss.cvar.hnsw_stats  # type: ignore[attr-defined]  # the faiss stub lists no cvar globals
        stats.reset()
        scores, ids = self.index.search(_as_f32(queries), k)
        return Hits(ids, scores, stats.ndis / max(len(queries), 1))
