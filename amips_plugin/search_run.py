"""A file of queries through the query path, timed and summarized: what `amips search` runs and prints.

The queries go through `rewriting.QueryRewriter.search` (the code every caller runs) either as one
batch or one call per query (`single`: the latency an application sending single queries sees, with
p50 / p99). One call beforehand loads the model and any side index, so that loading is not timed.
With exact answers (`truth`: the best key's id per query), the summary adds recall@1 (the returned
first hit is the best key) and recall@limit (the best key is among the returned ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from amips_plugin.adapters import SearchParams
from amips_plugin.core import point_ids

from .core.timing import latency_ms, one_at_a_time, timed
from .rewriting import QueryRewriter, SearchReport
from .truth import check_truth_ids, recall_at_1, recall_at_limit


@dataclass
class SearchRun:
    """Per query the returned ids and scores, what the query path did, and how long it took."""

    ids: np.ndarray
    scores: np.ndarray
    report: SearchReport
    seconds: float
    latencies: np.ndarray | None = None  # seconds per call, when the queries were sent one at a time


def run_queries(rewriter: QueryRewriter, collection: str, queries: np.ndarray, limit: int, mode: str,
                candidates: int | None = None, params: SearchParams = SearchParams(),
                candidate_source: str = "engine", single: bool = False) -> SearchRun:
    """Search `collection` for every row of `queries`: one batch, or one call per row when `single`."""

    def run(batch: np.ndarray) -> tuple[Any, SearchReport]:
        return rewriter.search(collection, batch, limit, mode, candidates, params, candidate_source)

    run(queries[:1])  # load the model (and key store) before timing
    if not single:
        (result, report), seconds = timed(lambda: run(queries))
        return SearchRun(result.ids, result.scores, report, seconds)
    (parts, latencies), seconds = timed(lambda: one_at_a_time(run, queries))
    report = parts[-1][1]
    report.rewritten, report.plain = sum(p[1].rewritten for p in parts), sum(p[1].plain for p in parts)
    report.escalated = sum(p[1].escalated for p in parts)
    return SearchRun(point_ids.concatenate([p[0].ids for p in parts]), np.concatenate([p[0].scores for p in parts]),
                     report, seconds, latencies)


def summary(rewriter: QueryRewriter, collection: str, run: SearchRun, mode: str, candidate_source: str,
            limit: int, truth: np.ndarray | None = None) -> dict[str, Any]:
    """The run as one flat record (what `amips search` prints, or its --json); `truth`: the best key's id per
    query (checked against the collection's ids: a file of row numbers for a UUID collection is refused)."""
    report, queries = run.report, len(run.ids)
    out: dict[str, Any] = {"collection": collection, "mode": mode, "candidates_from": candidate_source,
                           "notes": report.notes, "queries": queries, "limit": limit,
                           "rewritten": report.rewritten, "plain": report.plain, "escalated": report.escalated,
                           "fallback_reason": report.fallback_reason, "model_version": report.model_version,
                           "seconds": round(run.seconds, 4), "queries_per_second": round(queries / run.seconds, 1)}
    if run.latencies is not None:
        p50, p99 = latency_ms(run.latencies)
        out["latency_ms_p50"], out["latency_ms_p99"] = round(p50, 3), round(p99, 3)
    if truth is not None:
        check_truth_ids(rewriter.store, collection, truth)
        out["recall@1"] = round(recall_at_1(run.ids, truth), 4)
        out[f"recall@{limit}"] = round(recall_at_limit(run.ids, truth), 4)
    return out
