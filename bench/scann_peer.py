"""ScaNN as the peer to beat (issue 11): tree + asymmetric hashing (anisotropic, τ 0.2) + exact reorder,
its knob swept, on the same keys, test queries and recall@1 as bench.policy_bench.

    python -m bench.scann_peer [--datasets squad-train squad-sentences] [--test-queries 8000]

Per dataset: a ScaNN index with √N·2 leaves (rounded), AH with 2 dimensions per block and anisotropic
threshold 0.2, and exact reordering of the best `--reorder` AH candidates; `leaves_to_search` is swept.
Batch throughput is `search_batched` on one thread (Edge's query_batch also runs on one), best of
--repeats interleaved rounds. Writes --out/scann.json: per dataset, per setting, recall@1 and q/s,
and the cheapest setting reaching each target.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.datasets import load_dataset, run_all

from amips_plugin.core.timing import best_times
from amips_plugin.truth import recall_at_1

LIMIT = 10
LEAVES_TO_SEARCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    import scann  # the bench extra; imported here so --help works without it

    data = load_dataset(name)
    keys = np.ascontiguousarray(data.keys, dtype=np.float32)
    queries = np.ascontiguousarray(data.test_queries[: args.test_queries], dtype=np.float32)
    truth = data.test_argmax[: args.test_queries]
    leaves = int(round(2 * np.sqrt(len(keys))))
    started = time.perf_counter()
    searcher = (scann.scann_ops_pybind.builder(keys, LIMIT, "dot_product")
                .tree(num_leaves=leaves, num_leaves_to_search=8, training_sample_size=len(keys))
                .score_ah(2, anisotropic_quantization_threshold=0.2)
                .reorder(args.reorder).build())
    searcher.set_num_threads(1)
    build_seconds = time.perf_counter() - started
    grid = [n for n in LEAVES_TO_SEARCH if n <= leaves]

    def answer(n: int) -> np.ndarray:
        return searcher.search_batched(queries, leaves_to_search=n, pre_reorder_num_neighbors=args.reorder)[0]

    seconds = best_times({str(n): (lambda n=n: answer(n)) for n in grid}, args.repeats)
    rows = [{"leaves_to_search": n, "recall": recall_at_1(answer(n), truth),
             "qps": len(queries) / seconds[str(n)]} for n in grid]
    cheapest = {}
    for target in args.targets:
        meeting = [r for r in rows if r["recall"] >= target]
        cheapest[str(target)] = max(meeting, key=lambda r: r["qps"]) if meeting else None
    print(f"{name}: {leaves} leaves, built in {build_seconds:.0f} s", flush=True)
    for r in rows:
        print(f"  leaves_to_search {r['leaves_to_search']:>4}: recall@1 {r['recall']:.4f}, {r['qps']:,.0f} q/s",
              flush=True)
    return {"dataset": name, "keys": len(keys), "test_queries": len(queries), "leaves": leaves,
            "reorder": args.reorder, "build_seconds": build_seconds, "rows": rows, "cheapest": cheapest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["squad-train", "squad-sentences"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.95, 0.99])
    parser.add_argument("--test-queries", type=int, default=8000, help="the first N test queries")
    parser.add_argument("--reorder", type=int, default=100, help="AH candidates rescored exactly")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/policy"))
    run_all(run_dataset, parser.parse_args(), "scann.json")


if __name__ == "__main__":
    main()
