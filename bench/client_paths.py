"""What a query costs through each path an application can take on Qdrant Edge, batched and one per call.

On an advised collection (its stored policy read under `auto`) and a float32 copy as ingested (see
bench/advised_on_test.py for making both): the engine's own API (`EdgeShard.query_batch` / `query`, each
query's numpy vector handed over as a float32 memoryview, as amips' Edge adapter does, hit ids read) at plain
hnsw_ef 64 on each, against `AmipsClient.query_arrays` (numpy in and out) and `query_batch_points` /
`query_points` (qdrant-client's objects), under `auto` and under `off` at plain hnsw_ef 64 (plain search
through the same client). Interleaved rounds, best of `--repeats`.

    python -m bench.client_paths --dataset squad-train --store edge:runs/advise --collection train --float32 train_f32
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as edge
from qdrant_client import models

from amips_plugin.client import AmipsClient
from amips_plugin.core.timing import best_times
from bench.datasets import load_dataset

LIMIT, EF = 10, 64


def engine_request(query: np.ndarray, oversampling: float | None) -> edge.QueryRequest:
    quantization = None if oversampling is None else edge.QuantizationSearchParams(rescore=True,
                                                                                   oversampling=oversampling)
    # a float32 memoryview, as amips' Edge adapter hands queries over (cheaper than a list of floats): the
    # comparison isolates amips' own layer
    return edge.QueryRequest(limit=LIMIT, query=edge.Query.Nearest(memoryview(query)), with_payload=False,
                             with_vector=False, params=edge.SearchParams(hnsw_ef=EF, quantization=quantization))


def tasks(client: AmipsClient, collection: str, float32: str, queries: np.ndarray,
          singles: int) -> dict[tuple[str, str], Callable[[], list[Any]]]:
    """(batch or single, path) -> a call answering the queries with the first hit's id per query."""
    rows = list(queries)  # float32 vectors, as an embedding model hands them over: every path converts its own
    shards = {"float32 as made": (client.store._shard(float32), None),  # the engine itself, no amips code
              "advised": (client.store._shard(collection), 1.0 if client.store.quantized(collection) else None)}
    out: dict[tuple[str, str], Callable[[], list[Any]]] = {}
    for name, (shard, factor) in shards.items():
        out[("batch", f"engine, {name}, ef {EF}")] = lambda shard=shard, factor=factor: [
            points[0].id for points in shard.query_batch(edge.QueryBatchRequest([engine_request(q, factor)
                                                                                 for q in rows]))]
        out[("single", f"engine, {name}, ef {EF}")] = lambda shard=shard, factor=factor: [
            shard.query(engine_request(q, factor))[0].id for q in rows[:singles]]
    out[("batch", "query_arrays, auto")] = lambda: list(client.query_arrays(collection, queries, LIMIT)[0][:, 0])
    out[("batch", "query_batch_points, auto")] = lambda: [r.points[0].id for r in client.query_batch_points(
        collection, [models.QueryRequest(query=q.tolist(), limit=LIMIT, with_payload=False) for q in rows])]
    out[("single", "query_arrays, auto")] = lambda: [client.query_arrays(collection, q[None], LIMIT)[0][0, 0]
                                                     for q in queries[:singles]]
    out[("single", "query_points, auto")] = lambda: [client.query_points(
        collection, query=q, limit=LIMIT, with_payload=False).points[0].id for q in queries[:singles]]
    plain = models.SearchParams(hnsw_ef=EF, quantization=models.QuantizationSearchParams(oversampling=1.0)
                                if client.store.quantized(collection) else None)
    out[("batch", f"query_batch_points, off, ef {EF}")] = lambda: [r.points[0].id for r in client.query_batch_points(
        collection, [models.QueryRequest(query=q.tolist(), limit=LIMIT, with_payload=False, params=plain)
                     for q in rows], mode="off")]
    out[("single", f"query_points, off, ef {EF}")] = lambda: [client.query_points(
        collection, query=q, limit=LIMIT, with_payload=False, search_params=plain, mode="off").points[0].id
        for q in queries[:singles]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--float32", required=True)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--singles", type=int, default=400, help="queries sent one per call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    # at random: the query files are ordered by article, and a file's first rows are a few articles' questions
    rows = np.sort(np.random.default_rng(0).choice(len(data.test_queries), args.queries, replace=False))
    queries, truth = data.test_queries[rows], data.test_argmax[rows].astype(np.int64)
    client = AmipsClient(args.store)
    calls = tasks(client, args.collection, args.float32, queries, args.singles)
    recalls = {}
    for key, call in calls.items():  # the first call of each also warms it up; ids are row numbers (amips ingest)
        first_hits = np.array(call(), dtype=np.int64)
        recalls[key] = float(np.mean(first_hits == truth[: len(first_hits)]))
    measured = {}
    for (kind, path), seconds in best_times(calls, args.repeats).items():
        count = args.singles if kind == "single" else len(queries)
        measured[f"{kind} | {path}"] = {"us_per_query": seconds / count * 1e6, "qps": count / seconds,
                                    "recall@1": recalls[(kind, path)]}
        print(f"{kind:6s} {path:36s} {seconds / count * 1e6:7.1f} µs {count / seconds:9,.0f} q/s  "
              f"recall@1 {recalls[(kind, path)]:.4f}")
    if args.out:
        args.out.write_text(json.dumps({"dataset": args.dataset, "repeats": args.repeats, "rows": measured}, indent=1)
                            + "\n")


if __name__ == "__main__":
    main()
