"""Edge (or any store) search sweep: recall@1 and latency of off / replace / hybrid over hnsw_ef.

    python -m bench.search_sweep [--dataset squad-train] [--store edge:/tmp/amips-bench] \
        [--ef 4 8 16 32 64 128] [--latency-queries 500] [--out bench/results/search_sweep.json]

Ingests the set's keys (ids 0..N−1) into the store, trains the default model on its train
queries (skipped when the collection already has a fresh model), then for every hnsw_ef and mode
measures on the test queries: recall@1 of a batched search (limit 10, candidates 10, rescored by x),
single-query latency p50/p99 over the first `--latency-queries` queries, and batched throughput.
All modes are measured in the same run on the same index; compare ratios, not absolute times.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.datasets import load_dataset

from amips_plugin.adapters import SearchParams, open_store  # noqa: E402
from amips_plugin import collection_ops  # noqa: E402
from amips_plugin.freshness import stale_reason  # noqa: E402
from amips_plugin.core.errors import UnknownCollectionError  # noqa: E402
from amips_plugin.core.timing import latency_ms, one_at_a_time, timed  # noqa: E402
from amips_plugin.rewriting import MODES, QueryRewriter  # noqa: E402
from amips_plugin.train_config import TrainConfig  # noqa: E402
from amips_plugin.truth import recall_at_1

LIMIT = 10


def prepare(store, name: str, data) -> None:
    try:
        info = store.info(name)
    except UnknownCollectionError:
        info = None
    if info is None or info.count != len(data.keys):
        started = time.perf_counter()
        collection_ops.ingest(store, name, data.keys)
        print(f"# ingested {len(data.keys)} keys in {time.perf_counter() - started:.1f}s", flush=True)
    manifest = store.read_manifest(name)
    if manifest is None or stale_reason(manifest, store.write_stamp(name), store.info(name).count):
        trained = collection_ops.train(store, name, data.train_queries, TrainConfig(), progress=False)
        v = trained.result.validation
        print(f"# trained {trained.manifest['model']['kind']} in {trained.result.seconds:.0f}s: "
              f"validation match {v.match_rate:.3f}, E_rel {v.e_rel:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="squad-train")
    parser.add_argument("--store", default="edge:/tmp/amips-bench")
    parser.add_argument("--ef", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    parser.add_argument("--latency-queries", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("bench/results/search_sweep.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    store = open_store(args.store)
    name = args.dataset.replace("-", "_")
    prepare(store, name, data)
    rewriter = QueryRewriter(store)
    queries, truth = data.test_queries, data.test_argmax
    rows = []
    print(f"# {data.name}: {len(data.keys)} keys, {len(queries)} test queries; limit {LIMIT}; store {store.location}")
    print(f"{'hnsw_ef':>7} {'mode':>8} {'recall@1':>9} {'p50 ms':>8} {'p99 ms':>8} {'batch q/s':>10} {'rewritten':>9}")
    for ef in args.ef:
        params = SearchParams(hnsw_ef=ef)
        for mode in MODES:
            rewriter.search(name, queries[:8], LIMIT, mode, LIMIT, params)  # warm caches and the model
            def answer(q: np.ndarray, mode: str = mode, params: SearchParams = params):
                return rewriter.search(name, q, LIMIT, mode, LIMIT, params)

            (result, report), batch_seconds = timed(lambda: answer(queries))
            p50, p99 = latency_ms(one_at_a_time(answer, queries[:args.latency_queries])[1])
            row = {"hnsw_ef": ef, "mode": mode, "recall@1": recall_at_1(result.ids, truth),
                   "latency_ms_p50": p50, "latency_ms_p99": p99,
                   "batch_qps": len(queries) / batch_seconds, "rewritten": report.rewritten}
            rows.append(row)
            print(f"{ef:>7} {mode:>8} {row['recall@1']:>9.4f} {row['latency_ms_p50']:>8.3f} "
                  f"{row['latency_ms_p99']:>8.3f} {row['batch_qps']:>10.0f} {report.rewritten:>9}", flush=True)
    store.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
