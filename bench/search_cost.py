"""Recall@1 against total cost per query, every mode side by side with plain search, in one run.

    python -m bench.search_cost --preset quick            # squad-dev, ≤ 10 minutes on 2 cores
    python -m bench.search_cost --preset full [--datasets squad-train synthetic-1m]

For each dataset: FAISS IVF-Flat (inner product, √N lists, nprobe swept over the whole range) and
FAISS HNSW (efSearch swept), each searched with `off` (plain x), `replace` and `hybrid` (KeyNet at
several ρ and the SmoothMax SupportNet); `route` scans the fine lists a learned point router ranks
first (amips_plugin/routing.py), `route-gated` sends the queries it is least sure of (confidence
below the 10th percentile of held-out training queries) to the key centroids, and `route-untrained`
is the same two-level index routed by its key centroids (the router before training: what the
learning adds). Cost is inner-product equivalents
per query (bench/cost_curves.py); wall-clock p50/p99 and batched throughput come from the same run.
The routing table compares routers at c = 10 and c = √N lists: the share of test queries whose
best-ranked lists hold the true argmax, against the fraction of keys scanned.

Outputs in --out (default bench/results/search_cost/): points.json (every point), table.md (the
headline: the cheapest point of each mode at recall@1 0.9 and 0.95, and off / best), routing.md,
and one <dataset>.png of recall@1 against IPE per index.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from bench.cost_curves import CurvePoint, Rewriter, cheapest_at, cost_of, measure, run_mode
from bench.edge_curves import edge_curves
from bench.datasets import SYNTHETIC_SETS, Dataset, load_dataset, synthetic_dataset

from bench.faiss_store import FlatIndex, HNSWIndex, IVFIndex
from amips_plugin.model_artifact import load_model, save_model
from amips_plugin.router_training import RouterTraining, fit_router
from amips_plugin.routing import CorrectedModelRouter, PointRouter, TwoLevelPartition, rank_by_centroids
from amips_plugin.training import TrainConfig, fit
from amips_plugin.truth import recall_at_1

LIMIT = 10  # candidates rescored with x in replace / hybrid
SUBLISTS = 8
TARGETS = (0.9, 0.95)
PARTS = ("faiss", "route", "edge", "routing")
STOP_AT_RECALL = 0.99  # a curve stops once it is this close to exact
GATE_QUANTILE = 0.1  # route-gated: about this share of in-distribution queries falls back to the centroids


@dataclass(frozen=True)
class Preset:
    datasets: tuple[str, ...]
    keynet_rho: tuple[float, ...]
    smoothmax_rho: tuple[float, ...]
    train_steps: int
    noise_copies: int
    router_steps: int
    test_queries: int | None
    latency_queries: int
    max_model_params: int = 2_000_000  # rewriters and routing heads above this are skipped (CPU training time)
    edge_max_keys: int = 200_000  # larger sets skip Qdrant Edge (its ingest + HNSW build alone take too long here)
    coarse_candidates: tuple[int, ...] = (8, 16, 32)
    edge_rewriters: tuple[str, ...] = ("keynet ρ=0.003", "smoothmax ρ=0.003")


PRESETS = {
    "quick": Preset(("squad-dev",), keynet_rho=(0.003, 0.03), smoothmax_rho=(0.01,), train_steps=2000,
                    noise_copies=1, router_steps=800, test_queries=None, latency_queries=100,
                    edge_rewriters=("keynet ρ=0.003", "smoothmax ρ=0.01")),
    "full": Preset(("squad-dev", "squad-train", "synthetic-100k", "synthetic-1m"),
                   keynet_rho=(0.001, 0.003, 0.01, 0.03, 0.2), smoothmax_rho=(0.003, 0.01), train_steps=3000,
                   noise_copies=2, router_steps=3000, test_queries=5000, latency_queries=300),
}


@dataclass
class Workload:
    """One dataset's keys, training sample, test queries with exact answers, and new-topic queries."""

    data: Dataset
    queries: np.ndarray
    truth: np.ndarray
    new_queries: np.ndarray | None = None
    new_truth: np.ndarray | None = None
    noise_copies: int = 0  # noisy copies per training query (synthetic sets: 0, the sample is the distribution)
    points: list[CurvePoint] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_workload(name: str, preset: Preset) -> Workload:
    data = synthetic_dataset(name) if name in SYNTHETIC_SETS else load_dataset(name)
    queries, truth = data.test_queries, data.test_argmax
    if preset.test_queries is not None:
        queries, truth = queries[: preset.test_queries], truth[: preset.test_queries]
    work = Workload(data, queries, truth, noise_copies=0 if name in SYNTHETIC_SETS else preset.noise_copies)
    if name == "squad-train":  # squad-dev's questions are about articles squad-train has no questions on
        new = load_dataset("squad-dev").test_queries
        work.new_queries, work.new_truth = new, FlatIndex(data.keys).search(new, 1).ids[:, 0]
    return work


def knob_range(largest: int) -> list[int]:
    steps = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    return [s for s in steps if s < largest] + [largest]


def sweep(work: Workload, index: str, mode: str, model: str, knob: str, values: list[int], answer_at,
          latency_queries: int) -> None:
    """Measure one curve, point by point, until it reaches STOP_AT_RECALL."""
    for value in values:
        answer = answer_at(value)
        stats = measure(answer, work.queries, work.truth, latency_queries)
        point = CurvePoint(work.data.name, index, mode, model, knob, value, **stats)
        if work.new_queries is not None:
            point.recall_at_1_new_topics = recall_at_1(answer(work.new_queries)[0], work.new_truth)
        work.points.append(point)
        if point.recall_at_1 >= STOP_AT_RECALL:
            break
    last = work.points[-1]
    log(f"  {index:>5} {mode:>15} {model:>16}: {knob} up to {last.value} up to recall@1 {last.recall_at_1:.3f} "
        f"at {last.ipe:.0f} IPE")


def train_rewriters(work: Workload, preset: Preset, cache: Path) -> list[Rewriter]:
    """Train (or reload from `cache`, keyed by dataset, model, ρ and recipe) every rewriter."""
    keys = work.data.keys
    rewriters = []
    plan = [("keynet", rho) for rho in preset.keynet_rho] + [("smoothmax", rho) for rho in preset.smoothmax_rho]
    for kind, rho in plan:
        if rho * keys.size > preset.max_model_params:
            log(f"  skip {kind} ρ={rho}: {rho * keys.size:,.0f} parameters exceed the preset's "
                f"{preset.max_model_params:,}")
            continue
        config = TrainConfig(model=kind, params_fraction=rho, steps=preset.train_steps,
                             noise_copies=work.noise_copies, device="cpu")
        path = cache / f"{work.data.name}-{kind}-rho{rho:g}-steps{config.steps}-copies{config.noise_copies}.amips"
        if path.is_file():
            model, note = load_model(path).model, f"reloaded from {path}"
        else:
            result = fit(keys, work.data.train_queries, config, progress=False)
            model = result.model
            save_model(path, model, {"validation": result.validation.to_dict()})
            note = f"validation match {result.validation.match_rate:.3f}, trained in {result.seconds:.0f}s"
        rewriter = Rewriter(f"{kind} ρ={rho:g}", model)
        log(f"  {rewriter.name}: {model.num_parameters():,} parameters, {rewriter.ipe:.0f} IPE; {note}")
        rewriters.append(rewriter)
    return rewriters


def search_curves(work: Workload, preset: Preset, rewriters: list[Rewriter]) -> None:
    keys = work.data.keys
    nlist = max(1, round(math.sqrt(len(keys))))
    started = time.perf_counter()
    ivf = IVFIndex(keys, nlist)
    hnsw = HNSWIndex(keys)
    log(f"  built IVF-Flat ({nlist} lists) and HNSW (M=32) in {time.perf_counter() - started:.0f}s")
    indexes = {"ivf": (ivf.search, "nprobe", knob_range(nlist)),
               "hnsw": (hnsw.search, "efSearch", knob_range(512))}
    for index, (search, knob, values) in indexes.items():
        sweep(work, index, "off", "-", knob, values,
              lambda v, s=search: (lambda q: run_mode("off", s, keys, q, v, LIMIT, None)), preset.latency_queries)
        for rewriter in rewriters:
            for mode in ("replace", "hybrid"):
                sweep(work, index, mode, rewriter.name, knob, values,
                      lambda v, s=search, m=mode, r=rewriter: (lambda q: run_mode(m, s, keys, q, v, LIMIT, r)),
                      preset.latency_queries)


def route_curves(work: Workload, preset: Preset, nlist: int) -> None:
    """`route` (the trained point router), `route-gated` (the same, with its confidence gate
    calibrated on held-out training queries) and `route-untrained` (the key centroids)."""
    keys = work.data.keys
    held_out = min(len(work.data.train_queries) // 10, 5000)
    # a random split: the query files are grouped by article, and a leading slice would drop whole topics
    sample = work.data.train_queries[np.random.default_rng(0).permutation(len(work.data.train_queries))]
    started = time.perf_counter()
    partition = TwoLevelPartition.build(keys, nlist, SUBLISTS)
    index = IVFIndex(keys, len(partition.fine), centroids=partition.fine, assignment=partition.assignment)
    trained = PointRouter(partition)
    fit_router(trained, keys, sample[held_out:], partition.assignment,
               RouterTraining(steps=preset.router_steps, noise_copies=work.noise_copies))
    log(f"  two-level partition ({nlist}×{SUBLISTS}) and point router trained in {time.perf_counter() - started:.0f}s "
        f"({held_out:,} training queries held out for the gate)")
    learned, untrained = trained.freeze(), PointRouter(partition).freeze()
    for candidates in preset.coarse_candidates:
        gated = learned.calibrate_gate(sample[:held_out], candidates, GATE_QUANTILE)
        shares = [f"{name} {gated.rank(q, candidates).gated.mean():.1%}"
                  for name, q in (("test", work.queries), ("new topics", work.new_queries)) if q is not None]
        log(f"  M={candidates}: the gate (confidence < {gated.min_confidence:.3f}) sends to the centroids: "
            + ", ".join(shares))
        for name, router in (("route", learned), ("route-gated", gated), ("route-untrained", untrained)):
            def answer_at(p: int, router=router, candidates=candidates):
                def answer(q: np.ndarray) -> tuple[np.ndarray, float]:
                    ranking = router.rank(q, candidates)
                    hits = index.search_lists(q, 1, ranking.lists[:, :p])
                    return hits.ids[:, 0], hits.ipe + router.routing_ipe(candidates, float(ranking.gated.mean()))
                return answer
            sweep(work, "ivf", name, f"M={candidates}", "fine lists",
                  knob_range(min(candidates, nlist) * SUBLISTS), answer_at, preset.latency_queries)


def routing_table(work: Workload, preset: Preset) -> list[dict]:
    """Routers at c = 10 and c = √N: list hit rate against the fraction of keys scanned."""
    keys, rows = work.data.keys, []
    for lists in sorted({10, max(2, round(math.sqrt(len(keys))))}):
        partition = TwoLevelPartition.build(keys, lists, SUBLISTS)
        coarse_of_key = partition.coarse_assignment
        sizes = np.bincount(coarse_of_key, minlength=lists)
        point = PointRouter(partition)
        fit_router(point, keys, work.data.train_queries, partition.assignment,
                   RouterTraining(steps=preset.router_steps, noise_copies=work.noise_copies))
        routers = {"centroid": lambda q, c=partition.coarse: rank_by_centroids(q, c), "point router": point.rank_coarse}
        costs = {"centroid": float(lists), "point router": float(len(partition.fine))}
        for kind in ("keynet", "supportnet"):
            model = CorrectedModelRouter(partition.coarse, kind, width=32)
            if model.model.num_parameters() > preset.max_model_params:
                log(f"  skip {kind} heads at c={lists}: {model.model.num_parameters():,} parameters")
                continue
            fit_router(model, keys, work.data.train_queries, coarse_of_key,
                       RouterTraining(steps=preset.router_steps, noise_copies=work.noise_copies))
            routers[f"{kind} heads"], costs[f"{kind} heads"] = model.rank, model.routing_ipe()
        for name, rank in routers.items():
            row = {"dataset": work.data.name, "lists": lists, "router": name, "routing_ipe": costs[name],
                   **_hit_profile(rank(work.queries), coarse_of_key[work.truth], sizes, len(keys))}
            if work.new_queries is not None:
                new = _hit_profile(rank(work.new_queries), coarse_of_key[work.new_truth], sizes, len(keys))
                row.update({f"new_topics_{k}": v for k, v in new.items()})
            rows.append(row)
            log(f"  routing c={lists:>4} {name:>16}: top-1 list hit {row['hit_at_1']:.3f}, "
                f"scan for 0.9: {row['scanned_for_0.9']:.3f} of the keys")
    return rows


def _hit_profile(order: np.ndarray, true_list: np.ndarray, sizes: np.ndarray, num_keys: int) -> dict:
    rank = np.argmax(order == true_list[:, None], axis=1)
    scanned = np.cumsum(sizes[order], axis=1).mean(axis=0) / num_keys
    hit = np.array([(rank < p).mean() for p in range(1, order.shape[1] + 1)])
    profile = {"hit_at_1": float(hit[0])}
    for target in TARGETS:
        reach = np.flatnonzero(hit >= target)
        profile[f"scanned_for_{target}"] = float(scanned[reach[0]]) if len(reach) else 1.0
    return profile


def headline(points: list[CurvePoint]) -> str:
    """Markdown: per dataset and index, each curve's cheapest point at each target, and off / best."""
    lines = ["| dataset | index | mode | model | " + " | ".join(
        f"IPE @ {t} | p50 ms @ {t}" for t in TARGETS) + " |", "|---" * (4 + 2 * len(TARGETS)) + "|"]
    summary = []
    for dataset in dict.fromkeys(p.dataset for p in points):
        for index in ("ivf", "hnsw", "edge", "edge-sq"):
            curves: dict[tuple[str, str], list[CurvePoint]] = {}
            for p in points:
                if p.dataset == dataset and p.index == index:
                    curves.setdefault((p.mode, p.model.split(" M=")[0] if p.mode.startswith("route") else p.model),
                                      []).append(p)
            best = {t: {} for t in TARGETS}
            for (mode, model), curve in curves.items():
                cells = []
                for t in TARGETS:
                    hit = cheapest_at(curve, t)
                    ipe = "—" if not hit or np.isnan(hit.ipe) else f"{hit.ipe:,.0f}"
                    cells += [ipe, f"{hit.latency_ms_p50:.3f}" if hit else "—"]
                    if hit:
                        best[t][(mode, model)] = hit
                lines.append(f"| {dataset} | {index} | {mode} | {model} | " + " | ".join(cells) + " |")
            for t in TARGETS:
                off = best[t].get(("off", "-"))
                others = {k: v for k, v in best[t].items() if k[0] != "off"}
                if off and others:
                    (mode, model), top = min(others.items(), key=lambda kv: cost_of(kv[1]))
                    unit = "ms p50" if index.startswith("edge") else "IPE"
                    shown = (lambda p: f"{p.latency_ms_p50:.3f} ms p50") if unit == "ms p50" else \
                        (lambda p: f"{p.ipe:,.0f} IPE ({p.latency_ms_p50:.3f} ms p50)")
                    summary.append(f"- {dataset} / {index} @ recall@1 {t}: off {shown(off)}; best other mode: "
                                   f"{mode} {model} {shown(top)}; off / best = "
                                   f"{cost_of(off) / cost_of(top):.2f}× in {unit}, "
                                   f"{off.latency_ms_p50 / top.latency_ms_p50:.2f}× in p50")
    return "\n".join(lines) + "\n\n" + "\n".join(summary) + "\n"


def routing_markdown(rows: list[dict]) -> str:
    has_new = any("new_topics_hit_at_1" in r for r in rows)
    head = "| dataset | lists | router | routing IPE | top-1 list hit | keys scanned for 0.9 | for 0.95 |"
    head += " new topics: top-1 hit | scanned for 0.9 |" if has_new else ""
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        line = (f"| {r['dataset']} | {r['lists']} | {r['router']} | {r['routing_ipe']:,.0f} | {r['hit_at_1']:.3f} | "
                f"{r['scanned_for_0.9']:.3f} | {r['scanned_for_0.95']:.3f} |")
        if has_new:
            line += (f" {r.get('new_topics_hit_at_1', float('nan')):.3f} | "
                     f"{r.get('new_topics_scanned_for_0.9', float('nan')):.3f} |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot(points: list[CurvePoint], dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 11))
    for axis, index in zip(axes.flat, ("ivf", "hnsw", "edge", "edge-sq"), strict=True):
        curves: dict[str, list[CurvePoint]] = {}
        for p in points:
            if p.dataset == dataset and p.index == index:
                curves.setdefault(f"{p.mode} {p.model}".replace(" -", ""), []).append(p)
        palette = plt.get_cmap("tab20").colors
        for number, (label, curve) in enumerate(curves.items()):
            style = "-o" if label == "off" else ("-s" if label.startswith("route") else "--.")
            axis.plot([cost_of(p) for p in curve], [p.recall_at_1 for p in curve], style, label=label,
                      color="black" if label == "off" else palette[number % len(palette)],
                      linewidth=2 if label == "off" else 1, markersize=3)
        for t in TARGETS:
            axis.axhline(t, color="grey", linewidth=0.5)
        axis.set_xscale("log")
        axis.set_xlabel("p50 single-query latency, ms (model included)" if index.startswith("edge")
                        else "cost per query (inner-product equivalents, model included)")
        axis.set_ylabel("recall@1")
        lowest = min((p.recall_at_1 for curve in curves.values() for p in curve), default=0.5)
        axis.set_ylim(max(0.5, lowest - 0.02), 1.005)  # curves that start at recall 1.0 stay visible
        axis.set_title(f"{dataset}: " + {"ivf": "FAISS IVF-Flat", "hnsw": "FAISS HNSW", "edge": "Qdrant Edge HNSW",
                                         "edge-sq": "Qdrant Edge HNSW, int8 scalar quantization"}[index])
        if curves:
            axis.legend(fontsize=6, ncol=2)
        else:
            axis.text(0.5, 0.5, "not measured in this run", transform=axis.transAxes, ha="center", color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_results(out: Path, points: list[CurvePoint], routing: list[dict]) -> None:
    """Written after every part, so an interrupted run keeps what it has measured."""
    (out / "points.json").write_text(json.dumps([p.to_dict() for p in points], indent=1))
    (out / "routing.json").write_text(json.dumps(routing, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--datasets", nargs="+", help="override the preset's datasets")
    parser.add_argument("--keynet-rho", type=float, nargs="*", help="override the preset's KeyNet ρ values")
    parser.add_argument("--smoothmax-rho", type=float, nargs="*", help="override the preset's SmoothMax ρ values")
    parser.add_argument("--train-steps", type=int, help="override the preset's training steps (models and routers)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/search_cost"))
    parser.add_argument("--edge-root", type=Path, default=Path("/tmp/amips-bench-edge"),
                        help="folder for the Qdrant Edge shards (rebuilt each run)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="faiss: IVF/HNSW off/replace/hybrid; route: the routed IVF; edge: Qdrant Edge "
                             "(sets up to the preset's edge_max_keys); routing: the router table")
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads (1: single-query serving)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    if args.keynet_rho is not None:
        preset = replace(preset, keynet_rho=tuple(args.keynet_rho))
    if args.smoothmax_rho is not None:
        preset = replace(preset, smoothmax_rho=tuple(args.smoothmax_rho))
    if args.train_steps is not None:
        preset = replace(preset, train_steps=args.train_steps, router_steps=args.train_steps)
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    points: list[CurvePoint] = []
    routing: list[dict] = []
    for name in args.datasets or preset.datasets:
        work = load_workload(name, preset)
        log(f"{name}: {len(work.data.keys):,} keys × {work.data.keys.shape[1]}, "
            f"{len(work.data.train_queries):,} train / {len(work.queries):,} test queries")
        rewriters = train_rewriters(work, preset, args.out / "models")
        if "faiss" in args.parts:
            search_curves(work, preset, rewriters)
            save_results(args.out, points + work.points, routing)
        if "route" in args.parts:
            route_curves(work, preset, max(1, round(math.sqrt(len(work.data.keys)))))
            save_results(args.out, points + work.points, routing)
        if "edge" in args.parts and len(work.data.keys) <= preset.edge_max_keys:
            chosen = [r for r in rewriters if r.name in preset.edge_rewriters]
            work.points += edge_curves(name, work.data.keys, work.queries, work.truth, chosen,
                                       preset.latency_queries, args.edge_root, log)
            save_results(args.out, points + work.points, routing)
        if "routing" in args.parts:
            routing += routing_table(work, preset)
            save_results(args.out, points + work.points, routing)
        points += work.points
    table, routes = headline(points), routing_markdown(routing)
    (args.out / "table.md").write_text(table)
    (args.out / "routing.md").write_text(routes)
    print(table)
    print(routes)
    try:
        for name in args.datasets or preset.datasets:
            plot(points, name, args.out / f"{name}.png")
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no PNG written")
        return
    log(f"wrote {args.out}/points.json, table.md, routing.md and one PNG per dataset")


if __name__ == "__main__":
    main()
