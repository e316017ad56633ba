"""Tuned serving policies against plain search on FAISS HNSW and IVF, cost in inner products (issue 11).

    OMP_NUM_THREADS=1 python -m bench.faiss_policy_bench [--datasets squad-train squad-sentences synthetic-1m]
        [--engines hnsw ivf] [--targets 0.95 0.99] [--tune-queries Q.npy] [--tune-sample 15544]

The product's own code runs over the bench's FAISS stores (bench/faiss_policy_store.py), whose one knob
(efSearch for HNSW M --links, nprobe for IVF-Flat with ≈ 4·√N lists) is read from `SearchParams.hnsw_ef`.
Cost is the inner products a query computes (IPE: graph-walk distances, or the coarse quantizer's nlist
plus the probed lists' keys, plus any exact rescoring), free of timing noise; recall@1 is against the
exact argmax. Per dataset and engine:

1. plain search at every knob of the grid on the test queries: plain's (IPE, recall) curve;
2. per target, `tuning.tune` on the tune sample (squad sets: --tune-queries, training questions the
   models never saw; synthetic sets: their own training queries) measures plain search and the two-pass
   certificates and publishes the cheapest policy meeting the target. No σ̂ model is published in these
   stores, so tune runs the model-free certificates (s1, classifier). Every certificate's best plan and
   the chosen policy are then served on the test queries (`serving_policy.serve`), and each one's IPE is
   set against plain search's IPE at the same recall: plain's cost interpolated linearly in recall between
   the neighbouring points of its Pareto frontier (ratio = plain IPE / policy IPE);
3. squad sets, new topics: squad-dev's test questions against this set's keys (exact argmax by numpy),
   served as a stream through `QueryRewriter.search(mode="auto")` with the published policy and its
   shift guard: one warm-up call, then `serving_policy.PROBE_EVERY` calls, IPE and recall averaged over
   those; set against plain search's curve on the same questions, both ways: plain's recall at the
   policy's IPE, and plain's IPE at the policy's recall.

Outputs in --out: results.json (each dataset and engine's run replaces its earlier one there, so they can
run one at a time) and table.md over all of it, printed at the end.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np

from amips_plugin import serving_policy, tuning
from amips_plugin.adapters import SearchParams
from amips_plugin.arrays import load_vectors
from amips_plugin.core.errors import InputError
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.truth import recall_at_1
from bench.datasets import SYNTHETIC_SETS, Dataset, load_dataset, synthetic_dataset
from bench.faiss_policy_store import FaissHNSWStore, FaissIVFStore, FaissStore

LIMIT = 10
GRIDS = {"hnsw": tuning.EF_GRID,  # efSearch
         "ivf": (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)}  # nprobe
KNOB = {"hnsw": "efSearch", "ivf": "nprobe"}
NEW_TOPICS = "squad-dev"

Curve = dict[int, dict[str, float]]  # knob -> {"ipe", "recall"}
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def frontier(plain: Curve) -> list[tuple[float, float]]:
    """(recall, IPE) of plain's points that no other point dominates (as much recall for no more IPE),
    in increasing recall (and so increasing IPE)."""
    points = sorted({(row["recall"], row["ipe"]) for row in plain.values()})
    return [p for p in points if not any(q != p and q[0] >= p[0] and q[1] <= p[1] for q in points)]


def plain_ipe_at(plain: Curve, recall: float) -> float | None:
    """Plain search's IPE at exactly `recall`, linear in recall between frontier points; None outside it."""
    points = frontier(plain)
    if not points[0][0] <= recall <= points[-1][0]:
        return None
    return float(np.interp(recall, [p[0] for p in points], [p[1] for p in points]))


def plain_recall_at(plain: Curve, ipe: float) -> float | None:
    """Plain search's recall@1 at exactly `ipe`, linear in IPE between frontier points; None outside it."""
    points = frontier(plain)
    if not points[0][1] <= ipe <= points[-1][1]:
        return None
    return float(np.interp(ipe, [p[1] for p in points], [p[0] for p in points]))


def counted(store: FaissStore, queries: int, answer: Callable[[], T]) -> tuple[T, float]:
    """What `answer()` returns, and the inner products it computed per query."""
    store.inner_products = 0.0
    value = answer()
    return value, store.inner_products / queries


def plain_curve(store: FaissStore, queries: np.ndarray, truth: np.ndarray, grid: tuple[int, ...]) -> Curve:
    curve = {}
    for knob in grid:
        result, ipe = counted(store, len(queries), partial(store.search, store.name, queries, LIMIT,
                                                           SearchParams(hnsw_ef=knob)))
        curve[knob] = {"ipe": ipe, "recall": recall_at_1(result.ids, truth)}
    return curve


def build_store(engine: str, data: Dataset, links: int) -> tuple[FaissStore, dict[str, int]]:
    """The engine's store over the dataset's keys, and its index parameters."""
    if engine == "hnsw":
        return FaissHNSWStore(data.name, data.keys, links=links), {"links": links}
    store = FaissIVFStore(data.name, data.keys)
    return store, {"nlist": store.index.nlist}


def tune_sample(data: Dataset, args: argparse.Namespace) -> np.ndarray:
    """Synthetic sets tune on their own training queries; squad sets on --tune-queries."""
    sample = data.train_queries if data.name in SYNTHETIC_SETS else load_vectors(args.tune_queries)
    return sample[: args.tune_sample]


def served_rows(store: FaissStore, report: tuning.TuneReport, queries: np.ndarray, truth: np.ndarray,
                plain: Curve) -> list[dict[str, Any]]:
    """Each certificate's best plan and the chosen policy, served on the test queries, against plain."""
    rows = []
    for row in report.rows:
        if row.policy.kind != "two-pass" and row is not report.chosen:
            continue
        (result, escalated), ipe = counted(store, len(queries), partial(serving_policy.serve, store, store.name,
                                                                          queries, LIMIT, row.policy))
        recall = recall_at_1(result.ids, truth)
        rows.append({"policy": row.name, "chosen": row is report.chosen, "describe": row.policy.describe(),
                     "recall": recall, "ipe": ipe, "escalated": float(escalated.mean()),
                     **versus_plain(plain, recall, ipe)})
    return rows


def versus_plain(plain: Curve, recall: float, ipe: float) -> dict[str, Any]:
    """Plain search at the policy's recall (its IPE, the cost ratio) and at the policy's IPE (its recall)."""
    plain_ipe, plain_recall = plain_ipe_at(plain, recall), plain_recall_at(plain, ipe)
    return {"plain_ipe": plain_ipe, "ratio": None if plain_ipe is None else plain_ipe / ipe,
            "plain_recall": plain_recall,
            "recall_at_least_plain": None if plain_recall is None else recall >= plain_recall}


def new_topics(store: FaissStore, grid: tuple[int, ...]) -> dict[str, Any]:
    """squad-dev's test questions against this store's keys, a stream through the published policy."""
    queries = load_dataset(NEW_TOPICS).test_queries
    truth = np.concatenate([(queries[i:i + 512] @ store.keys.T).argmax(axis=1) for i in range(0, len(queries), 512)])
    path = QueryRewriter(store)
    _, warm = path.search(store.name, queries, LIMIT, mode="auto")
    store.inner_products, recalls, escalated, notes = 0.0, [], 0, list(warm.notes)
    for _ in range(serving_policy.PROBE_EVERY):
        result, report = path.search(store.name, queries, LIMIT, mode="auto")
        recalls.append(recall_at_1(result.ids, truth))
        escalated += report.escalated
        notes.extend(n for n in report.notes if n not in notes)
    calls = serving_policy.PROBE_EVERY * len(queries)
    ipe, recall = store.inner_products / calls, float(np.mean(recalls))
    plain = plain_curve(store, queries, truth, grid)
    return {"queries": len(queries), "recall": recall, "ipe": ipe, "escalated": escalated / calls, "notes": notes,
            **versus_plain(plain, recall, ipe), "plain": {str(k): v for k, v in plain.items()}}


def run(name: str, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    data = synthetic_dataset(name) if name in SYNTHETIC_SETS else load_dataset(name)
    started = time.perf_counter()
    store, index = build_store(engine, data, args.links)
    build_seconds = time.perf_counter() - started
    log(f"{name} {engine}: built over {len(data.keys):,} keys in {build_seconds:.0f} s")
    grid, sample = GRIDS[engine], tune_sample(data, args)
    queries, truth = data.test_queries[: args.test_queries], data.test_argmax[: args.test_queries]
    plain = plain_curve(store, queries, truth, grid)
    out: dict[str, Any] = {
        "dataset": name, "engine": engine, "knob": KNOB[engine], "keys": len(data.keys),
        "index": index,
        "build_seconds": build_seconds, "tune_queries": len(sample), "test_queries": len(queries),
        "plain": {str(k): v for k, v in plain.items()}, "targets": {}}
    for target in args.targets:
        started = time.perf_counter()
        try:
            report = tuning.tune(store, name, sample, target, LIMIT, repeats=args.repeats, ef_grid=grid)
        except InputError as exc:  # no knob of the grid reaches the target
            log(f"{name} {engine} @ {target}: {exc}")
            out["targets"][str(target)] = {"error": str(exc)}
            continue
        entry: dict[str, Any] = {"tune_seconds": time.perf_counter() - started, "verdict": report.verdict(),
                                 "tune": report.to_dict(), "rows": served_rows(store, report, queries, truth, plain)}
        log(f"{name} {engine} @ {target}: tuned in {entry['tune_seconds']:.0f} s\n{tuning.format_frontier(report)}")
        if name.startswith("squad"):
            entry["new_topics"] = new_topics(store, grid)
        out["targets"][str(target)] = entry
    return out


def write_table(results: list[dict[str, Any]], out: Path) -> str:
    lines = ["| set | engine | target | policy (test queries) | recall@1 | IPE | escalated | plain IPE at equal recall "
             "| plain / policy |", "|" + "---|" * 9]
    for r in results:
        for target, entry in r["targets"].items():
            if "error" in entry:
                lines.append(f"| {r['dataset']} | {r['engine']} | {target} | {entry['error']} |" + " |" * 5)
            for p in entry.get("rows", []):
                name = p["policy"] + (" **(chosen)**" if p["chosen"] else "")
                lines.append(f"| {r['dataset']} | {r['engine']} | {target} | {name} | {p['recall']:.4f} | "
                             f"{p['ipe']:,.0f} | {p['escalated']:.1%} | {_n(p['plain_ipe'])} | {_x(p['ratio'])} |")
    lines += ["", "New topics (squad-dev test questions, stream through `--mode auto`, shift guard on):", "",
              "| keys | engine | target | recall@1 | IPE | escalated | plain recall at equal IPE | recall ≥ plain? "
              "| plain IPE at equal recall | plain / policy |", "|" + "---|" * 10]
    for r in results:
        for target, entry in r["targets"].items():
            if (t := entry.get("new_topics")) is not None:
                verdict = "-" if t["recall_at_least_plain"] is None else "yes" if t["recall_at_least_plain"] else "no"
                lines.append(f"| {r['dataset']} | {r['engine']} | {target} | {t['recall']:.4f} | {t['ipe']:,.0f} | "
                             f"{t['escalated']:.1%} | {_r(t['plain_recall'])} | {verdict} | {_n(t['plain_ipe'])} | "
                             f"{_x(t['ratio'])} |")
    lines += ["", "Plain search on the test queries (knob: recall@1 / IPE):", "",
              "| set | engine | index | build s | plain curve |", "|---|---|---|---|---|"]
    for r in results:
        curve = ", ".join(f"{k}: {v['recall']:.4f} / {v['ipe']:,.0f}" for k, v in r["plain"].items())
        index = ", ".join(f"{k} {v}" for k, v in r["index"].items())
        lines.append(f"| {r['dataset']} | {r['engine']} | {index} | {r['build_seconds']:.0f} | {r['knob']} {curve} |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["squad-train", "squad-sentences", "synthetic-1m"])
    parser.add_argument("--engines", nargs="+", choices=sorted(GRIDS), default=["hnsw", "ivf"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.95, 0.99])
    parser.add_argument("--tune-queries", type=Path, default=Path("bench/results/policy/tune_queries.f16.npy"))
    parser.add_argument("--tune-sample", type=int, default=15544)
    parser.add_argument("--test-queries", type=int, default=None, help="the first N test queries (default: all)")
    parser.add_argument("--links", type=int, default=32, help="HNSW M")
    parser.add_argument("--repeats", type=int, default=tuning.DEFAULT_REPEATS, help="tune's timing repeats")
    parser.add_argument("--out", type=Path, default=Path("bench/results/faiss-policy"))
    parser.add_argument("--table-only", action="store_true", help="re-render table.md from results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    faiss.omp_set_num_threads(1)
    results_path = args.out / "results.json"
    if args.table_only:
        print(write_table(json.loads(results_path.read_text()), args.out))
        return
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    for name in args.datasets:
        for engine in args.engines:  # a (dataset, engine) run replaces its earlier result in results.json
            result = run(name, engine, args)
            results = [r for r in results if (r["dataset"], r["engine"]) != (name, engine)] + [result]
            results_path.write_text(json.dumps(results, indent=1))
    print(write_table(results, args.out))
    log(f"wrote {results_path} and {args.out / 'table.md'}")


if __name__ == "__main__":
    main()
