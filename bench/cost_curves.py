"""Recall@1 against total cost for one query mode on one index: the machinery of bench/search_cost.py.

Every point of a curve is measured on the same test queries:

  * recall@1: the true argmax key is the top result after rescoring the candidates with x;
  * IPE per query (docs/design.md §2): the index's own distance computations (FAISS counters), plus
    the model's forward FLOPs / 2d, plus the candidates rescored with x, plus a router's scores;
  * wall clock: single-query latency p50/p99 over a fixed query sample (model forward included,
    one query at a time) and batched throughput over all test queries.

Modes (docs/design.md §4) are the product's own: `off`, `replace` and `hybrid` are answered by
`QueryRewriter.search` — the code `amips search` and `AmipsClient` run — over the FAISS index wrapped as a
`VectorStore` (bench/faiss_policy_store.py), with the rewriter published as the collection's model; the
store counts every inner product it computes (graph or list scans, and the exact rescoring of the
prefetched candidates). `route` lets a learned router choose the lists to scan with x (IVF only).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from amips_plugin import model_registry
from amips_plugin.adapters.base import SearchParams
from amips_plugin.model_artifact import encode_model
from amips_plugin.core.timing import latency_ms, one_at_a_time, timed
from amips_plugin.models import MIPSModel
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.truth import recall_at_1
from bench.faiss_policy_store import FaissStore, Search


@dataclass(frozen=True)
class Rewriter:
    """A trained model the query path serves, and its forward cost in IPE per query."""

    name: str
    model: MIPSModel

    @property
    def ipe(self) -> float:
        return self.model.flops_per_query() / (2 * self.model.config.dim)


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


COLLECTION = "bench"
_PATHS: dict[tuple[int, str], tuple[FaissStore, QueryRewriter]] = {}


def product_path(search: Search, keys: np.ndarray, rewriter: Rewriter | None) -> tuple[FaissStore, QueryRewriter]:
    """The product's query path over `search`, with `rewriter` published as the collection's model
    (one store per index and rewriter, made on first use, outside any timing)."""
    key = (id(search), rewriter.name if rewriter else "-")
    if key not in _PATHS:
        store = FaissStore(COLLECTION, keys, search)
        if rewriter is not None:
            model_registry.publish(store, COLLECTION, encode_model(rewriter.model),
                                   model_registry.current_fingerprint(store, COLLECTION))
        _PATHS[key] = (store, QueryRewriter(store))
    return _PATHS[key]


def run_mode(mode: str, search: Search, keys: np.ndarray, queries: np.ndarray, knob: int, limit: int,
             rewriter: Rewriter | None) -> tuple[np.ndarray, float]:
    """Top-1 key per query and IPE per query for off / replace / hybrid, answered by the product's query
    path with `limit` results and `limit` candidates per prefetch (the CLI's default at limit ≥ 10)."""
    store, path = product_path(search, keys, rewriter if mode != "off" else None)
    before = store.inner_products
    result, report = path.search(COLLECTION, queries, limit, mode, limit, SearchParams(hnsw_ef=knob))
    if mode != "off" and report.fallback_reason:
        raise RuntimeError(f"the benchmark's model was not used: {report.fallback_reason}")
    model_ipe = rewriter.ipe if rewriter is not None and mode != "off" else 0.0
    return result.ids[:, 0], (store.inner_products - before) / len(queries) + model_ipe


def measure(answer: Callable[[np.ndarray], tuple[np.ndarray, float]], queries: np.ndarray, truth: np.ndarray,
            latency_queries: int) -> dict[str, float]:
    """Recall@1, IPE, batched throughput and single-query latency of one configured search."""
    answer(queries[:4])  # warm-up
    (top1, ipe), batch_seconds = timed(lambda: answer(queries))
    p50, p99 = latency_ms(one_at_a_time(answer, queries[:latency_queries])[1])
    return {"recall_at_1": recall_at_1(top1, truth), "ipe": float(ipe),
            "latency_ms_p50": p50, "latency_ms_p99": p99, "batch_qps": len(queries) / batch_seconds}


def cost_of(point: CurvePoint) -> float:
    """IPE where the index counts its work; p50 latency (ms) where it cannot (Qdrant Edge)."""
    return point.latency_ms_p50 if np.isnan(point.ipe) else point.ipe


def cheapest_at(points: list[CurvePoint], target: float) -> CurvePoint | None:
    """The cheapest point whose recall@1 reaches `target` (None when no point does)."""
    reaching = [p for p in points if p.recall_at_1 >= target]
    return min(reaching, key=cost_of) if reaching else None
