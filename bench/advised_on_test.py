"""The policy `amips advise --apply` stored, read on the test questions against plain search.

`amips advise` picks a storage and a policy on held-out *training* questions, every setting certified with
the same 95% margin. This reads the result the way a user meets it: on the set's test questions (drawn at random:
the files are ordered by article), through the query path (`rewriting.QueryRewriter.search`, what `amips search`
and `AmipsClient.query_arrays` run), in one interleaved run (best of `--repeats`): plain search on a float32 copy
left as ingested, plain search at every hnsw_ef × oversampling on the advised collection and on `--also`
collections of the same keys in the other storages advise tried (mode "off"), and the stored policy ("auto").

    S=edge:runs/advise
    amips --store $S ingest train ../shared/data/squad-train/keys.f16.npy
    amips --store $S ingest train_f32 ../shared/data/squad-train/keys.f16.npy
    amips --store $S advise train --queries ../shared/data/squad-train/train_queries.f16.npy --target-recall 0.99 \\
        --max-queries 16000 --repeats 2 --configs none,int8,int8+disk,turbo4+disk --max-bytes-per-key 384 --apply
    amips --store $S ingest train_int8 ../shared/data/squad-train/keys.f16.npy --quantization int8
    python -m bench.advised_on_test --dataset squad-train --store $S --collection train --float32 train_f32 \
        --also train_int8

Prints each setting's recall@1 and q/s, and the policy's throughput over float32's cheapest plain hnsw_ef meeting
the target, over the best plain setting of the advised storage and of any storage meeting it (read on these
questions, with no margin), at matched recall, and over plain q/s interpolated to the target and to the policy's
recall (`ratios`).
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
            repeats: int, others: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """{setting: {"recall@1", "qps", "collection", "plain"}} for every plain setting and the stored policy; `others`:
    collections of the same keys in the other storages `advise` tried, searched plainly too."""
    settings: dict[str, tuple[str, str, SearchParams]] = {}
    for ef in EF_GRID:
        settings[f"float32 ef {ef}"] = (float32, "off", SearchParams(hnsw_ef=ef))
        for name in (collection, *others):
            storage, on_disk = rewriter.store.storage(name)
            label = storage + ("+disk" if on_disk else "")
            for factor in (OVERSAMPLING if rewriter.store.quantized(name) else (None,)):
                setting = f"{label} ef {ef}" + ("" if factor is None else f"×{factor:g}")
                settings[setting] = (name, "off", SearchParams(hnsw_ef=ef, oversampling=factor))
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


def ratios(rows: dict[str, dict[str, Any]], float32: str, collection: str, target: float) -> dict[str, Any]:
    """The policy's q/s over float32's cheapest plain setting ≥ target, the advised storage's best plain ≥ target,
    the best plain setting of any storage ≥ target, the cheapest plain setting (any collection) whose recall
    reaches the policy's, and the same two with each storage's q/s interpolated (linearly in recall@1 between
    neighbouring hnsw_ef) to exactly the target and to the policy's recall: the grid's steps alone can move the
    first readings by a third (ef 64 → 96)."""
    policy = rows["policy"]
    plain = {name: row for name, row in rows.items() if row["plain"]}

    def best(names: list[str], floor: float) -> tuple[str, float] | None:
        meeting = [(plain[n]["qps"], n) for n in names if plain[n]["recall@1"] >= floor]
        return (max(meeting)[1], policy["qps"] / max(meeting)[0]) if meeting else None

    def interpolated(floor: float) -> tuple[str, float] | None:
        """The best q/s any storage's plain search reaches at recall `floor`, between two settings of its curve."""
        found = []
        for curve in {(r["collection"], name.split(" ef ")[1].partition("×")[1:]) for name, r in plain.items()}:
            points = sorted((r["recall@1"], r["qps"]) for name, r in plain.items()
                            if (r["collection"], name.split(" ef ")[1].partition("×")[1:]) == curve)
            for (r0, q0), (r1, q1) in zip(points, points[1:]):
                if r0 < floor <= r1:
                    found.append((q0 + (q1 - q0) * (floor - r0) / (r1 - r0), f"{curve[0]}{''.join(curve[1])}"))
        return (max(found)[1], policy["qps"] / max(found)[0]) if found else None

    on_float32 = [n for n, r in plain.items() if r["collection"] == float32]
    advised = [n for n, r in plain.items() if r["collection"] == collection]
    return {"float32_cheapest": best(on_float32, target), "advised_best": best(advised, target),
            "any_storage_best": best(list(plain), target),
            "matched_recall": best(list(plain), policy["recall@1"]),
            "interpolated_at_target": interpolated(target),
            "interpolated_at_policy_recall": interpolated(policy["recall@1"]),
            "policy_meets_target": policy["recall@1"] >= target}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--collection", required=True, help="the advised collection (its stored policy is read)")
    parser.add_argument("--float32", required=True, help="a float32 collection of the same keys, as ingested")
    parser.add_argument("--also", nargs="*", default=[],
                        help="collections of the same keys in the other storages advise tried (plain search only)")
    parser.add_argument("--queries", type=int, default=4000, help="N test questions, drawn at random (seed 0)")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    # at random: the query files are ordered by article, and a file's first rows are a few articles' questions
    rows = np.sort(np.random.default_rng(0).choice(len(data.test_queries), args.queries, replace=False))
    queries, truth = data.test_queries[rows], data.test_argmax[rows].astype(np.int64)
    rewriter = QueryRewriter(open_store(args.store))
    measured = measure(rewriter, args.collection, args.float32, queries, truth, args.repeats, tuple(args.also))
    for name, row in measured.items():
        print(f"{name:24s} recall@1 {row['recall@1']:.4f} {row['qps']:9,.0f} q/s")
    read = ratios(measured, args.float32, args.collection, args.target)
    for what, found in read.items():
        print(f"{what}: {found}")
    if args.out:
        args.out.write_text(json.dumps({"dataset": args.dataset, "queries": len(queries), "target": args.target,
                                        "repeats": args.repeats, "rows": measured, "ratios": read}, indent=1) + "\n")


if __name__ == "__main__":
    main()
