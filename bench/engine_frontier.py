"""The whole engine as a user could configure it by hand, against amips' tuned policy on it (issue 23).

    nice python -m bench.engine_frontier [--datasets squad-train squad-sentences] [--target 0.99] \
        [--storages none int8 turbo4 turbo2 bq2 bq1 turbo4+disk pq16+disk] [--amips-pq 48 96 192]

Per dataset, one Edge shard of the same keys per storage (adapters/storage.py; cached under --root).
`tuning.tune` — the code `amips tune` runs — tunes each for --target on the first --tune-sample training
queries (its grid: hnsw_ef × oversampling on a quantized storage). Then, on the first --test-queries test
questions (recall@1 of the exact argmax), timed as batches in interleaved rounds, best of --repeats: plain
search at every (hnsw_ef, oversampling) of GRID × OVERSAMPLING on every storage, and each stored policy
through the query path (`QueryRewriter.search(mode="auto")`, as users run it).

Printed and written to --out, per storage: vector bytes per key in RAM, the policy's recall@1 and q/s,
and its ratio to the best plain setting (highest q/s) whose test recall reaches the policy's — on float32,
on the same storage, on any storage — at that grid point and with plain search's cost interpolated to
exactly the policy's recall along its Pareto frontier (bench.policy_bench.interpolated_plain_qps). No
model is needed (the certificates that read none: s1, classifier).
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

from amips_plugin import collection_ops
from amips_plugin import tuning
from amips_plugin.adapters import SearchParams, open_store
from amips_plugin.adapters.storage import QUANTIZATIONS
from amips_plugin.advise import parse_configuration
from amips_plugin import pq_build
from amips_plugin.core.errors import InputError, UnknownCollectionError
from amips_plugin.core.timing import best_times
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.truth import recall_at_1

LIMIT = 10
GRID = (16, 32, 48, 64, 96, 128, 192, 256)
OVERSAMPLING = (1.0, 2.0, 4.0)
PQ_CANDIDATES = (10, 20, 50, 100, 200, 400)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def collection_for(store, name: str, keys: np.ndarray, configuration: str) -> str:
    quantization, on_disk = parse_configuration(configuration)
    collection = (name.replace("-", "_") + ("_f32" if quantization == "none" else f"_{quantization}")
                  + ("_disk" if on_disk else ""))
    try:
        store.info(collection)
    except UnknownCollectionError:
        started = time.perf_counter()
        collection_ops.ingest(store, collection, keys, quantization=quantization, on_disk=on_disk)
        log(f"{collection}: ingested and indexed {len(keys):,} keys in {time.perf_counter() - started:.0f}s")
    return collection


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    data = load_dataset(name)
    dim = data.keys.shape[1]
    store = open_store(f"edge:{args.root}")
    try:
        collections = {q: collection_for(store, name, data.keys, q) for q in args.storages}
        tuned = {}
        for quantization, collection in collections.items():
            started = time.perf_counter()
            try:
                report = tuning.tune(store, collection, data.train_queries[: args.tune_sample], args.target, LIMIT,
                                     repeats=args.tune_repeats, ef_grid=GRID, oversampling_grid=OVERSAMPLING,
                                     certificates=("s1", "classifier"))
            except InputError as exc:  # no setting of the grid reaches the target on this storage
                log(f"{collection}: not tuned: {exc}")
                continue
            tuned[quantization] = report.to_dict()["chosen"]
            log(f"{collection}: tuned in {time.perf_counter() - started:.0f}s: {report.verdict()}")
        queries, truth = data.test_queries[: args.test_queries], data.test_argmax[: args.test_queries]
        settings = {}
        for quantization, collection in collections.items():
            factors = OVERSAMPLING if QUANTIZATIONS[parse_configuration(quantization)[0]].quantized else (None,)
            settings |= {_label(quantization, ef, factor): (collection, SearchParams(hnsw_ef=ef, oversampling=factor))
                         for ef in GRID for factor in factors}
        rewriter = QueryRewriter(store)
        tasks = {label: partial(store.search, collection, queries, LIMIT, params)
                 for label, (collection, params) in settings.items()}
        tasks |= {f"amips auto ({q})": partial(rewriter.search, collection, queries, LIMIT, "auto")
                  for q, collection in collections.items() if q in tuned}
        seconds = best_times(tasks, args.repeats)
        rows = {}
        for label, (collection, params) in settings.items():
            ids = store.search(collection, queries, LIMIT, params).ids
            rows[label] = {"recall": recall_at_1(ids, truth), "qps": len(queries) / seconds[label]}
        policies = {}
        for quantization, collection in collections.items():
            if quantization not in tuned:
                policies[quantization] = {"bytes_per_key": _bytes_per_key(quantization, dim), "tuned": None}
                continue
            result, served = rewriter.search(collection, queries, LIMIT, "auto")
            auto = {"recall": recall_at_1(result.ids, truth),
                    "qps": len(queries) / seconds[f"amips auto ({quantization})"],
                    "policy": served.notes[0] if served.notes else served.fallback_reason,
                    "bytes_per_key": _bytes_per_key(quantization, dim), "tuned": tuned[quantization]}
            for scope, prefix in (("float32", "none "), ("same storage", f"{quantization} "), ("any storage", "")):
                at_recall = {label: row for label, row in rows.items() if label.startswith(prefix)}
                meeting = {label: row for label, row in at_recall.items() if row["recall"] >= auto["recall"]}
                best = max(meeting, key=lambda label: meeting[label]["qps"]) if meeting else None
                interpolated = interpolated_plain_qps(at_recall, auto["recall"])
                auto[f"vs best plain, {scope}"] = best and {
                    "setting": best, **rows[best], "ratio": auto["qps"] / rows[best]["qps"],
                    "interpolated_qps": interpolated, "interpolated_ratio": interpolated and auto["qps"] / interpolated}
            policies[quantization] = auto
            log(f"{name} {quantization} ({auto['bytes_per_key']:,.0f} B/key): auto {auto['recall']:.4f} at "
                f"{auto['qps']:,.0f} q/s; " + "; ".join(
                    f"{scope}: {v['setting']} {v['ratio']:.2f}× ({(v['interpolated_ratio'] or 0):.2f}× interpolated)"
                    for scope in ("float32", "same storage", "any storage")
                    if (v := auto[f"vs best plain, {scope}"])))
        key_store = amips_key_store(store, collections.get("none") or collection_for(store, name, data.keys, "none"),
                                    queries, truth, args) if args.amips_pq else {}
        return {"dataset": name, "keys": len(data.keys), "dim": dim, "test_queries": len(queries),
                "target": args.target, "tune_sample": min(args.tune_sample, len(data.train_queries)),
                "rows": rows, "policies": policies, "amips_pq": key_store}
    finally:
        store.close()


def amips_key_store(store, collection: str, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace) -> dict:
    """The anisotropic PQ side index at each --amips-pq M, served through the query path at every L."""
    rewriter, out = QueryRewriter(store), {}
    for subspaces in args.amips_pq:
        started = time.perf_counter()
        pq_build.build(store, collection, subspaces)
        log(f"{collection}: amips PQ with {subspaces} codes a key built in {time.perf_counter() - started:.0f}s")
        tasks = {L: partial(rewriter.search, collection, queries, LIMIT, "off", L, SearchParams(), "pq")
                 for L in PQ_CANDIDATES}
        seconds = best_times(tasks, args.repeats)
        rows = {}
        for L in PQ_CANDIDATES:
            result, report = rewriter.search(collection, queries, LIMIT, "off", L, SearchParams(), "pq")
            assert not report.notes, report.notes  # the side index answered, not engine candidates
            rows[str(L)] = {"recall": recall_at_1(result.ids, truth), "qps": len(queries) / seconds[L]}
            log(f"  amips PQ M={subspaces} L={L}: {rows[str(L)]['recall']:.4f} at {rows[str(L)]['qps']:,.0f} q/s")
        out[str(subspaces)] = {"bytes_per_key": subspaces, "candidates": rows}
    return out


def _bytes_per_key(configuration: str, dim: int) -> float:
    quantization, on_disk = parse_configuration(configuration)
    return QUANTIZATIONS[quantization].ram_bytes_per_key(dim, on_disk)


def _label(quantization: str, ef: int, factor: float | None) -> str:
    return f"{quantization} ef {ef}" + ("" if factor is None else f" ×{factor:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["squad-train", "squad-sentences"])
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--storages", nargs="+", default=["none", "int8", "turbo4", "turbo2", "bq2", "bq1"],
                        help="Storages to build and compare: " + ", ".join(QUANTIZATIONS) + " (none: float32), each "
                             "optionally NAME+disk (originals on disk).")
    parser.add_argument("--amips-pq", nargs="*", type=int, default=[],
                        help="Subspaces (one-byte codes per key) of amips' anisotropic PQ key store to measure too.")
    parser.add_argument("--root", type=Path, default=Path("bench/results/engine/edge"))
    parser.add_argument("--tune-sample", type=int, default=8000)
    parser.add_argument("--test-queries", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tune-repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/engine"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        result = run_dataset(name, args)
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
        for label, row in result["rows"].items():
            print(f"  {label:<24} {row['recall']:.4f} {row['qps']:>9,.0f}")


if __name__ == "__main__":
    main()
