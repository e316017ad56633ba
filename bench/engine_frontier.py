"""The whole engine as a user could configure it by hand, against amips' tuned policy on it (issue 23).

    nice python -m bench.engine_frontier [--datasets squad-train squad-sentences] [--target 0.99]

Per dataset, two Edge shards of the same keys (cached under --root): float32, and int8 scalar
quantization (Qdrant's one line of config: quantile 0.99, in RAM, rescored with the originals).
`tuning.tune` — the code `amips tune` runs — tunes the int8 collection for --target on the first
--tune-sample training queries (its grid: hnsw_ef × oversampling). Then, on the first --test-queries test
questions (recall@1 of the exact argmax), timed as batches in interleaved rounds, best of --repeats:

* plain search on float32 at every hnsw_ef of GRID,
* plain search on int8 at every (hnsw_ef, oversampling) of GRID × OVERSAMPLING,
* the stored policy through the query path (`QueryRewriter.search(mode="auto")`, as users run it).

Printed and written to --out: each row's recall@1 and q/s; the cheapest float32 plain setting and the
best plain setting of any storage (highest q/s) whose test recall reaches the policy's; and the policy's
ratio to each, at that grid point and with plain search's cost interpolated to exactly the policy's recall
along its Pareto frontier (bench.policy_bench.interpolated_plain_qps). No model is needed (the certificates that read none: s1, classifier).
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np

from bench.datasets import load_dataset
from bench.policy_bench import interpolated_plain_qps

from amips_plugin import collections as collection_ops
from amips_plugin import tuning
from amips_plugin.adapters import SearchParams, open_store
from amips_plugin.core.errors import UnknownCollectionError
from amips_plugin.core.timing import best_times
from amips_plugin.rewriting import QueryRewriter

LIMIT = 10
GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256)
OVERSAMPLING = (1.0, 2.0, 4.0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def collection_for(store, name: str, keys: np.ndarray, quantized: bool) -> str:
    collection = name.replace("-", "_") + ("_int8" if quantized else "_f32")
    try:
        store.info(collection)
    except UnknownCollectionError:
        started = time.perf_counter()
        collection_ops.ingest(store, collection, keys, scalar_quantization=quantized)
        log(f"{collection}: ingested and indexed {len(keys):,} keys in {time.perf_counter() - started:.0f}s")
    return collection


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    data = load_dataset(name)
    store = open_store(f"edge:{args.root}")
    try:
        f32 = collection_for(store, name, data.keys, quantized=False)
        int8 = collection_for(store, name, data.keys, quantized=True)
        started = time.perf_counter()
        report = tuning.tune(store, int8, data.train_queries[: args.tune_sample], args.target, LIMIT,
                             repeats=args.tune_repeats, ef_grid=GRID, oversampling_grid=OVERSAMPLING,
                             certificates=("s1", "classifier"))
        log(f"{int8}: tuned in {time.perf_counter() - started:.0f}s: {report.verdict()}")
        queries, truth = data.test_queries[: args.test_queries], data.test_argmax[: args.test_queries]
        settings = {f"float32 ef {ef}": (f32, SearchParams(hnsw_ef=ef)) for ef in GRID}
        settings |= {f"int8 ef {ef} ×{factor:g}": (int8, SearchParams(hnsw_ef=ef, oversampling=factor))
                     for ef in GRID for factor in OVERSAMPLING}
        rewriter = QueryRewriter(store)
        tasks = {label: partial(store.search, collection, queries, LIMIT, params)
                 for label, (collection, params) in settings.items()}
        tasks["amips auto (int8)"] = partial(rewriter.search, int8, queries, LIMIT, "auto")
        seconds = best_times(tasks, args.repeats)
        rows = {}
        for label, (collection, params) in settings.items():
            ids = store.search(collection, queries, LIMIT, params).ids
            rows[label] = {"recall": float(np.mean(ids[:, 0] == truth)), "qps": len(queries) / seconds[label]}
        result, served = rewriter.search(int8, queries, LIMIT, "auto")
        auto = {"recall": float(np.mean(result.ids[:, 0] == truth)), "qps": len(queries) / seconds["amips auto (int8)"],
                "policy": served.notes[0] if served.notes else served.fallback_reason, "escalated": served.escalated}
        out = {"dataset": name, "keys": len(data.keys), "test_queries": len(queries), "target": args.target,
               "tune_sample": min(args.tune_sample, len(data.train_queries)), "tuned": report.to_dict()["chosen"],
               "rows": rows, "auto": auto}
        for scope, prefix in (("float32", "float32"), ("any storage", "")):
            meeting = {label: row for label, row in rows.items() if label.startswith(prefix) and row["recall"] >= auto["recall"]}
            best = max(meeting, key=lambda label: meeting[label]["qps"]) if meeting else None
            at_recall = interpolated_plain_qps({label: row for label, row in rows.items() if label.startswith(prefix)},
                                               auto["recall"])
            out[f"best plain, {scope}"] = best and {"setting": best, **rows[best], "ratio": auto["qps"] / rows[best]["qps"],
                                                    "interpolated_qps": at_recall,
                                                    "interpolated_ratio": at_recall and auto["qps"] / at_recall}
        log(f"{name}: auto {auto['recall']:.4f} at {auto['qps']:,.0f} q/s; best float32 plain at that recall: "
            f"{out['best plain, float32']}; best plain of any storage: {out['best plain, any storage']}")
        return out
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["squad-train", "squad-sentences"])
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--root", type=Path, default=Path("bench/results/engine/edge"))
    parser.add_argument("--tune-sample", type=int, default=8000)
    parser.add_argument("--test-queries", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tune-repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/engine"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        result = run_dataset(name, args)
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
        for label, row in result["rows"].items():
            print(f"  {label:<22} {row['recall']:.4f} {row['qps']:>9,.0f}")


if __name__ == "__main__":
    main()
