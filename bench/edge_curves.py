"""The same comparison on Qdrant Edge (the plugin's embedded store), through the plugin's query path.

The collection is ingested fresh into an Edge shard (real HNSW), twice: with float32 vectors only
("edge") and with int8 scalar quantization searched at oversampling 2 and rescored with the
originals ("edge-sq"). Each rewriter is published as the collection's model exactly as
`amips import` would, and `QueryRewriter.search` answers the test queries with limit 10 (the
Query API's prefetch + rescoring) while hnsw_ef is swept. Edge does not
report how many vectors a search scored, so this curve's cost axis is wall-clock time only
(p50 single-query latency, model forward included), and points carry no IPE.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from bench.cost_curves import CurvePoint, Rewriter, measure
from amips_plugin.adapters import SearchParams, open_store
from amips_plugin import collection_ops
from amips_plugin import model_registry
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.model_artifact import encode_model

LIMIT = 10
EF_VALUES = (4, 8, 16, 32, 64, 128, 256)
SQ_OVERSAMPLING = 2.0


def edge_curves(dataset: str, keys: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                rewriters: list[Rewriter], latency_queries: int, root: Path,
                log: Callable[[str], None]) -> list[CurvePoint]:
    points: list[CurvePoint] = []
    for index, quantized in (("edge", False), ("edge-sq", True)):
        points += _store_curves(dataset, index, quantized, keys, queries, truth, rewriters, latency_queries,
                                root, log)
    return points


def _store_curves(dataset: str, index: str, quantized: bool, keys: np.ndarray, queries: np.ndarray,
                  truth: np.ndarray, rewriters: list[Rewriter], latency_queries: int, root: Path,
                  log: Callable[[str], None]) -> list[CurvePoint]:
    collection = f"{dataset}-{index}".replace("-", "_")
    shutil.rmtree(root / collection, ignore_errors=True)
    store = open_store(f"edge:{root}")
    try:
        collection_ops.ingest(store, collection, keys, quantization="int8" if quantized else "none")
        fingerprint = model_registry.current_fingerprint(store, collection)
        path = QueryRewriter(store)
        points: list[CurvePoint] = []

        def curve(mode: str, model: str) -> None:
            for ef in EF_VALUES:
                params = SearchParams(hnsw_ef=ef, oversampling=SQ_OVERSAMPLING if quantized else None)

                def answer(q: np.ndarray) -> tuple[np.ndarray, float]:
                    result, _ = path.search(collection, q, LIMIT, mode, LIMIT, params)
                    return result.ids[:, 0], float("nan")

                points.append(CurvePoint(dataset, index, mode, model, "hnsw_ef", ef,
                                         **measure(answer, queries, truth, latency_queries)))
            log(f"  {index:>7} {mode:>15} {model:>16}: hnsw_ef up to {EF_VALUES[-1]}, recall@1 "
                f"{points[-1].recall_at_1:.3f} at p50 {points[-1].latency_ms_p50:.3f} ms")

        curve("off", "-")
        for rewriter in rewriters:
            model_registry.publish(store, collection, encode_model(rewriter.model), fingerprint)
            for mode in ("replace", "hybrid"):
                curve(mode, rewriter.name)
        return points
    finally:
        store.close()
