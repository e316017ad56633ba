"""What the confidence gate does: the same model and index with the gate on and off.

    python -m bench.gate [--store edge:/tmp/amips-bench] [--collection squad_train] [--ef 16]

Needs a collection with a trained smoothmax model (bench/search_sweep.py makes one). Query sets:
the collection's own test queries (in distribution) and squad-dev's test questions, which are
about Wikipedia articles absent from squad-train (new topics; their true best key is computed
exactly over the collection). For each: the share of queries the gate would send to plain search,
recall@1 and batched throughput of plain search, replace with the gate, replace without it
(threshold 0), and hybrid (which rewrites every query), all on the same index in one run.
"""
from __future__ import annotations

import argparse
import time

import torch

from bench.datasets import load_dataset

from amips_plugin.adapters import SearchParams, open_store  # noqa: E402
from amips_plugin.collection_ops import read_keys  # noqa: E402
from amips_plugin.rewriting import QueryRewriter  # noqa: E402
from amips_plugin.truth import recall_at_1

LIMIT = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="edge:/tmp/amips-bench")
    parser.add_argument("--collection", default="squad_train")
    parser.add_argument("--ef", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    store = open_store(args.store)
    keys, ids, _ = read_keys(store, args.collection)
    rewriter = QueryRewriter(store)
    params = SearchParams(hnsw_ef=args.ef)
    model, _, reason = rewriter.model_for(args.collection, keys.shape[1])
    if model is None or not hasattr(model, "gate_threshold"):
        raise SystemExit(f"no gated model for {args.collection!r}: {reason or 'not a smoothmax model'}")
    calibrated = float(model.gate_threshold)
    sets = {"in-distribution (squad-train test)": load_dataset("squad-train").test_queries,
            "new topics (squad-dev test)": load_dataset("squad-dev").test_queries}
    print(f"# {args.collection}: {len(keys)} keys, hnsw_ef {args.ef}, limit {LIMIT}; gate threshold {calibrated:.4f}")
    print(f"{'queries':>36} {'search':>14} {'to plain':>9} {'recall@1':>9} {'q/s':>7}")
    for name, queries in sets.items():
        truth = ids[(queries @ keys.T).argmax(axis=1)]
        for label, mode, threshold in (("plain", "off", calibrated), ("replace, gated", "replace", calibrated),
                                       ("replace, no gate", "replace", 0.0), ("hybrid", "hybrid", calibrated)):
            model.gate_threshold.fill_(threshold)
            started = time.perf_counter()
            result, report = rewriter.search(args.collection, queries, LIMIT, mode, LIMIT, params)
            seconds = time.perf_counter() - started
            share = report.plain / len(queries)
            print(f"{name:>36} {label:>14} {share:>9.3f} {recall_at_1(result.ids, truth):>9.4f} "
                  f"{len(queries) / seconds:>7.0f}", flush=True)
    model.gate_threshold.fill_(calibrated)
    store.close()


if __name__ == "__main__":
    main()
