"""Recall@1 against total cost for one query mode on one index: the machinery of bench/search_cost.py.

Every point of a curve is measured on the same test queries:

  * recall@1: the true argmax key is the top result after rescoring the candidates with x;
  * IPE per query (docs/design.md §2): the index's own distance computations (FAISS counters), plus
    the model's forward FLOPs / 2d, plus the candidates rescored with x, plus a router's scores;
  * wall clock: single-query latency p50/p99 over a fixed query sample (model forward included,
    one query at a time) and batched throughput over all test queries.

Modes (docs/design.md §4): `off` searches with x; `replace` searches with ŷ and rescores its top
`limit` by <x, ·>; `hybrid` runs both searches and rescores the union; `route` lets a learned
router choose the lists to scan with x (IVF only).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from amips_plugin.adapters.faiss_store import Hits
from amips_plugin.inference import predict_keys
from amips_plugin.models import MIPSModel

Search = Callable[[np.ndarray, int, int], Hits]  # (queries, k, knob) -> Hits


@dataclass(frozen=True)
class Rewriter:
    """A trained model as the query path uses it: ŷ for a batch, and its cost in IPE per query."""

    name: str
    model: MIPSModel

    @property
    def ipe(self) -> float:
        return self.model.flops_per_query() / (2 * self.model.config.dim)

    def __call__(self, queries: np.ndarray) -> np.ndarray:
        return predict_keys(self.model, queries)


@dataclass
class CurvePoint:
    dataset: str
    index: str
    mode: str
    model: str
    knob: str
    value: int
    recall_at_1: float
    ipe: float
    latency_ms_p50: float
    latency_ms_p99: float
    batch_qps: float
    recall_at_1_new_topics: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def rescore_top1(keys: np.ndarray, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The candidate with the largest <x, y> per query (−1 marks an empty slot)."""
    safe = np.where(candidates < 0, 0, candidates)
    scores = np.einsum("bd,bkd->bk", queries, keys[safe])
    scores[candidates < 0] = -np.inf
    return np.take_along_axis(safe, scores.argmax(axis=1, keepdims=True), axis=1)[:, 0]


def run_mode(mode: str, search: Search, keys: np.ndarray, queries: np.ndarray, knob: int, limit: int,
             rewriter: Rewriter | None) -> tuple[np.ndarray, float]:
    """Top-1 key per query and IPE per query for off / replace / hybrid."""
    if mode == "off":
        hits = search(queries, 1, knob)
        return hits.ids[:, 0], hits.ipe
    assert rewriter is not None
    predicted = rewriter(queries)
    rewritten = search(predicted, limit, knob)
    cost = rewriter.ipe + rewritten.ipe + limit
    if mode == "replace":
        return rescore_top1(keys, queries, rewritten.ids), cost
    plain = search(queries, 1, knob)
    return rescore_top1(keys, queries, np.concatenate([plain.ids, rewritten.ids], axis=1)), cost + plain.ipe


def measure(answer: Callable[[np.ndarray], tuple[np.ndarray, float]], queries: np.ndarray, truth: np.ndarray,
            latency_queries: int) -> dict[str, float]:
    """Recall@1, IPE, batched throughput and single-query latency of one configured search."""
    answer(queries[:4])  # warm-up
    started = time.perf_counter()
    top1, ipe = answer(queries)
    batch_seconds = time.perf_counter() - started
    latencies = []
    for row in range(min(latency_queries, len(queries))):
        tick = time.perf_counter()
        answer(queries[row : row + 1])
        latencies.append(time.perf_counter() - tick)
    return {"recall_at_1": float(np.mean(top1 == truth)), "ipe": float(ipe),
            "latency_ms_p50": 1000 * float(np.percentile(latencies, 50)),
            "latency_ms_p99": 1000 * float(np.percentile(latencies, 99)),
            "batch_qps": len(queries) / batch_seconds}


def cost_of(point: CurvePoint) -> float:
    """IPE where the index counts its work; p50 latency (ms) where it cannot (Qdrant Edge)."""
    return point.latency_ms_p50 if np.isnan(point.ipe) else point.ipe


def cheapest_at(points: list[CurvePoint], target: float) -> CurvePoint | None:
    """The cheapest point whose recall@1 reaches `target` (None when no point does)."""
    reaching = [p for p in points if p.recall_at_1 >= target]
    return min(reaching, key=cost_of) if reaching else None
