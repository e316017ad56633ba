"""The policy `amips advise --apply` stored, read on the test questions against plain search.

`amips advise` picks a storage and a policy on held-out *training* questions, every setting certified with
the same 95% margin. This reads the result the way a user meets it: on the set's test questions, through the
query path (`rewriting.QueryRewriter.search`, what `amips search` and `AmipsClient.query_arrays` run), in
one interleaved run (best of `--repeats`): plain search on a float32 copy left as ingested, plain search at
every hnsw_ef × oversampling on the advised collection (mode "off"), and the stored policy (mode "auto").

    S=edge:runs/advise
    amips --store $S ingest train ../shared/data/squad-train/keys.f16.npy
    amips --store $S ingest train_f32 ../shared/data/squad-train/keys.f16.npy
    amips --store $S advise train --queries ../shared/data/squad-train/train_queries.f16.npy --target-recall 0.99 \\
        --max-queries 16000 --repeats 2 --configs none,int8,int8+disk,turbo4+disk --max-bytes-per-key 384 --apply
    python -m bench.advised_on_test --dataset squad-train --store $S --collection train --float32 train_f32

Prints each setting's recall@1 and q/s, and the policy's throughput over float32's cheapest plain hnsw_ef meeting
the target and over the best plain setting of the advised storage meeting it (both read on these questions,
with no margin), and at matched recall (the cheapest plain setting whose recall reaches the policy's).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from amips_plugin.adapters import SearchParams, open_store
from amips_plugin.core.timing import best_times
from amips_plugin.rewriting import QueryRewriter
from bench.datasets import load_dataset

EF_GRID = (32, 48, 64, 96, 128, 192)
OVERSAMPLING = (1.0, 2.0)
LIMIT = 10


def measure(rewriter: QueryRewriter, collection: str, float32: str, queries: np.ndarray, truth: np.ndarray,
            repeats: int) -> dict[str, dict[str, Any]]:
    """{setting: {"recall@1", "qps", "collection", "plain"}} for every plain setting and the stored policy."""
    quantized = rewriter.store.quantized(collection)
    storage, on_disk = rewriter.store.storage(collection)
    advised = storage + ("+disk" if on_disk else "")
    settings: dict[str, tuple[str, str, SearchParams]] = {}
    for ef in EF_GRID:
        settings[f"float32 ef {ef}"] = (float32, "off", SearchParams(hnsw_ef=ef))
        for factor in (OVERSAMPLING if quantized else (None,)):
            name = f"{advised} ef {ef}" + ("" if factor is None else f"×{factor:g}")
            settings[name] = (collection, "off", SearchParams(hnsw_ef=ef, oversampling=factor))
    settings["policy"] = (collection, "auto", SearchParams())
    tasks, rows = {}, {}
    for name, (target, mode, params) in settings.items():
        def task(target: str = target, mode: str = mode, params: SearchParams = params) -> Any:
            return rewriter.search(target, queries, LIMIT, mode, None, params)
        result, report = task()
        if mode == "auto" and report.fallback_reason:
            raise SystemExit(f"no usable policy on {collection!r}: {report.fallback_reason}")
        rows[name] = {"recall@1": float((result.ids[:, 0] == truth).mean()), "collection": target,
                      "plain": mode == "off", "notes": report.notes}
        tasks[name] = task
    for name, seconds in best_times(tasks, repeats).items():
        rows[name]["qps"] = len(queries) / seconds
    return rows


def ratios(rows: dict[str, dict[str, Any]], float32: str, target: float) -> dict[str, Any]:
    """The policy's q/s over float32's cheapest plain setting ≥ target, the advised storage's best plain ≥ target,
    and the cheapest plain setting (any collection) whose recall reaches the policy's."""
    policy = rows["policy"]
    plain = {name: row for name, row in rows.items() if row["plain"]}

    def best(names: list[str], floor: float) -> tuple[str, float] | None:
        meeting = [(plain[n]["qps"], n) for n in names if plain[n]["recall@1"] >= floor]
        return (max(meeting)[1], policy["qps"] / max(meeting)[0]) if meeting else None

    on_float32 = [n for n, r in plain.items() if r["collection"] == float32]
    advised = [n for n, r in plain.items() if r["collection"] != float32]
    return {"float32_cheapest": best(on_float32, target), "advised_best": best(advised, target),
            "matched_recall": best(list(plain), policy["recall@1"]),
            "policy_meets_target": policy["recall@1"] >= target}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--collection", required=True, help="the advised collection (its stored policy is read)")
    parser.add_argument("--float32", required=True, help="a float32 collection of the same keys, as ingested")
    parser.add_argument("--queries", type=int, default=4000, help="the first N test questions")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    queries, truth = data.test_queries[: args.queries], data.test_argmax[: args.queries].astype(np.int64)
    rewriter = QueryRewriter(open_store(args.store))
    rows = measure(rewriter, args.collection, args.float32, queries, truth, args.repeats)
    for name, row in rows.items():
        print(f"{name:24s} recall@1 {row['recall@1']:.4f} {row['qps']:9,.0f} q/s")
    read = ratios(rows, args.float32, args.target)
    for what, found in read.items():
        print(f"{what}: {found}")
    if args.out:
        args.out.write_text(json.dumps({"dataset": args.dataset, "queries": len(queries), "target": args.target,
                                        "repeats": args.repeats, "rows": rows, "ratios": read}, indent=1) + "\n")


if __name__ == "__main__":
    main()
