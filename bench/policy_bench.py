"""Tuned serving policies against plain HNSW search on Qdrant Edge, through the product's own code (issue 11).

    nice python -m bench.policy_bench [--datasets squad-train squad-sentences] [--targets 0.95 0.99]

Per dataset: the keys are ingested into an Edge shard (cached under --root), the collection's model
(for σ̂) is the one `amips train` stored there (train it first on the fit queries, see README), and
`amips_plugin.tuning.tune` tunes a policy per target on a sample of training queries the model did not
see (`--tune-queries`). Then, on the test queries (recall@1 of the exact argmax, test_argmax.i32.npy):

* plain search at every hnsw_ef of the grid and every tuned policy are timed as batches, interleaved,
  best of --repeats (the tuned policy through `QueryRewriter.search(mode="auto")`, i.e. the stored
  manifest; every other certificate's best plan through `serving_policy.serve`);
* each policy's throughput is divided by that of the cheapest plain hnsw_ef whose recall reaches the
  policy's own recall in this run (so the ratio compares equal recall);
* single-query p50/p99 of the tuned policy and of that plain ef (`--single` queries, one at a time,
  both through `QueryRewriter.search`: mode auto against mode off at that hnsw_ef);
* squad-train only: new-topic queries (squad-dev's test questions, exact argmax by numpy): the policy's
  recall and throughput beside plain search's curve.

Outputs in --out: results.json and table.md, and <dataset>.png (recall@1 against batch throughput).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from bench.datasets import load_dataset

from amips_plugin.adapters import SearchParams, open_store
from amips_plugin import collections as collection_ops
from amips_plugin import serving_policy, tuning
from amips_plugin.arrays import load_vectors
from amips_plugin.core.errors import UnknownCollectionError
from amips_plugin.core.timing import best_times, latency_ms, one_at_a_time
from amips_plugin.rewriting import QueryRewriter

LIMIT = 10
PLAIN_GRID = (12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cheapest_plain_at(plain: dict[int, dict], recall: float) -> int | None:
    """The plain hnsw_ef with the highest throughput among those whose recall reaches `recall`."""
    meeting = [ef for ef, row in plain.items() if row["recall"] >= recall]
    return max(meeting, key=lambda ef: plain[ef]["qps"]) if meeting else None


def interpolated_plain_qps(plain: dict, recall: float) -> float | None:
    """Plain search's throughput at exactly `recall`: per-query cost interpolated linearly in recall between
    the neighbouring points of plain's Pareto frontier (the grid's discrete step otherwise flatters or
    penalises a policy whose recall falls just above or below one hnsw_ef). None above the grid's best recall."""
    points = sorted((row["recall"], 1 / row["qps"]) for row in plain.values())
    frontier = [p for i, p in enumerate(points) if all(p[1] < q[1] for q in points[i + 1:])]
    if recall > frontier[-1][0]:
        return None
    return 1 / float(np.interp(recall, [p[0] for p in frontier], [p[1] for p in frontier]))


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    data = load_dataset(name)
    collection = name.replace("-", "_")
    store = open_store(f"edge:{args.root}")
    try:
        try:
            store.info(collection)
        except UnknownCollectionError:
            log(f"{name}: ingesting {len(data.keys):,} keys into Edge")
            collection_ops.ingest(store, collection, data.keys)
        sample = load_vectors(args.tune_queries)[: args.tune_sample]
        queries, truth = data.test_queries[: args.test_queries], data.test_argmax[: args.test_queries]
        path = QueryRewriter(store)
        model, _, reason = path.model_for(collection, data.keys.shape[1], len(data.keys))
        log(f"{name}: model for σ̂: {'yes' if model is not None else reason}")
        out: dict = {"dataset": name, "keys": len(data.keys), "test_queries": len(queries), "targets": {}}

        tuned = {}
        for target in args.targets:
            started = time.perf_counter()
            report = tuning.tune(store, collection, sample, target, LIMIT, repeats=args.repeats)
            log(f"{name}: tuned for {target} in {time.perf_counter() - started:.0f} s\n{tuning.format_frontier(report)}")
            tuned[target] = report
            out["targets"][str(target)] = {"tune": report.to_dict(), "tune_seconds": time.perf_counter() - started}
            # the stored policy is the last one tuned; re-tune per target right before it is served below

        plain_tasks = {f"plain {ef}": (lambda ef=ef: store.search(collection, queries, LIMIT, SearchParams(hnsw_ef=ef)))
                       for ef in PLAIN_GRID}
        plain = {ef: {"recall": float(np.mean(store.search(collection, queries, LIMIT, SearchParams(hnsw_ef=ef)).ids[:, 0]
                                              == truth))} for ef in PLAIN_GRID}
        policies = {}
        for target, report in tuned.items():
            for row in report.rows:
                if row.policy.kind == "two-pass" or row is report.chosen:
                    policies[f"{target}: {row.name}" + (" (chosen)" if row is report.chosen else "")] = row.policy
        policy_tasks = {label: (lambda p=policy: serving_policy.serve(store, collection, queries, LIMIT, p, model))
                        for label, policy in policies.items()}
        seconds = best_times({**plain_tasks, **policy_tasks}, args.repeats)
        for ef in PLAIN_GRID:
            plain[ef]["qps"] = len(queries) / seconds[f"plain {ef}"]
        out["plain"] = {str(ef): row for ef, row in plain.items()}
        rows = []
        for label, policy in policies.items():
            result, escalated = serving_policy.serve(store, collection, queries, LIMIT, policy, model)
            recall = float(np.mean(result.ids[:, 0] == truth))
            qps = len(queries) / seconds[label]
            ef = cheapest_plain_at(plain, recall)
            rows.append({"policy": label, "describe": policy.describe(), "recall": recall, "qps": qps,
                         "escalated": float(escalated.mean()), "plain_ef": ef,
                         "plain_recall": plain[ef]["recall"] if ef else None,
                         "plain_qps": plain[ef]["qps"] if ef else None,
                         "ratio": qps / plain[ef]["qps"] if ef else None})
            log(f"{name}: {label}: recall {recall:.4f}, {qps:,.0f} q/s, {escalated.mean():.1%} escalated; "
                f"plain at that recall: ef {ef} ({plain[ef]['qps'] if ef else float('nan'):,.0f} q/s) "
                f"→ {rows[-1]['ratio'] or float('nan'):.2f}×")
        out["policies"] = rows

        for target, report in tuned.items():  # through the product's query path: the stored manifest
            stored = serving_policy.Policy.from_manifest(report.manifest)
            tuning.publish_policy(store, collection, stored,
                                  collection_ops.read_keys(store, collection)[2],
                                  store.read_manifest(collection, serving_policy.SLOT))

            def auto_answer(q: np.ndarray, collection: str = collection):
                return path.search(collection, q, LIMIT, mode="auto")

            auto_result, auto_report = auto_answer(queries)
            auto_recall = float(np.mean(auto_result.ids[:, 0] == truth))
            auto_seconds = best_times({"auto": lambda answer=auto_answer: answer(queries)}, args.repeats)["auto"]
            ef = cheapest_plain_at(plain, auto_recall)
            single = queries[: args.single]
            p50, p99 = latency_ms(one_at_a_time(auto_answer, single)[1])
            plain_p50, plain_p99 = latency_ms(one_at_a_time(  # plain through the same query path (mode off), at that ef
                lambda q, ef=ef: path.search(collection, q, LIMIT, mode="off", params=SearchParams(hnsw_ef=ef)),
                single)[1]) if ef else (None, None)
            entry = out["targets"][str(target)]
            entry["auto"] = {"describe": stored.describe(), "recall": auto_recall,
                             "qps": len(queries) / auto_seconds, "notes": auto_report.notes,
                             "fallback_reason": auto_report.fallback_reason, "plain_ef": ef,
                             "plain_recall": plain[ef]["recall"] if ef else None,
                             "plain_qps": plain[ef]["qps"] if ef else None,
                             "ratio": len(queries) / auto_seconds / plain[ef]["qps"] if ef else None,
                             "p50_ms": p50, "p99_ms": p99, "plain_p50_ms": plain_p50, "plain_p99_ms": plain_p99}
            log(f"{name}: auto @ {target}: {entry['auto']}")
            if name == "squad-train":
                entry["new_topics"] = new_topics(store, collection, data.keys, args)
                log(f"{name}: new topics @ {target}: {entry['new_topics']}")
        return out
    finally:
        store.close()


def new_topics(store, collection: str, keys: np.ndarray, args) -> dict:
    """squad-dev's test questions against squad-train's keys, as a stream: the stored policy through the
    query path (`QueryRewriter.search(mode="auto")`, so with its shift guard) answers the whole set once
    to warm the guard, then PROBE_EVERY more times; recall and time are the mean over those calls (which
    include the guard's probes). Plain search's curve beside it is the best of --repeats (so the
    comparison favours plain search)."""
    queries = load_dataset("squad-dev").test_queries
    truth = np.concatenate([(queries[i:i + 512] @ keys.T).argmax(axis=1) for i in range(0, len(queries), 512)])
    path = QueryRewriter(store)
    _, first_report = path.search(collection, queries, LIMIT, mode="auto")
    recalls, escalated, notes, started = [], 0, [], time.perf_counter()
    for _ in range(serving_policy.PROBE_EVERY):
        result, report = path.search(collection, queries, LIMIT, mode="auto")
        recalls.append(float(np.mean(result.ids[:, 0] == truth)))
        escalated += report.escalated
        notes.extend(n for n in report.notes if n not in notes)
    qps = serving_policy.PROBE_EVERY * len(queries) / (time.perf_counter() - started)
    tasks = {f"plain {ef}": (lambda ef=ef: store.search(collection, queries, LIMIT, SearchParams(hnsw_ef=ef)))
             for ef in PLAIN_GRID}
    seconds = best_times(tasks, args.repeats)
    plain = {ef: {"recall": float(np.mean(store.search(collection, queries, LIMIT, SearchParams(hnsw_ef=ef)).ids[:, 0]
                                          == truth)), "qps": len(queries) / seconds[f"plain {ef}"]} for ef in PLAIN_GRID}
    affordable = [ef for ef in PLAIN_GRID if plain[ef]["qps"] >= qps]  # plain at no more cost than the policy
    ef = max(affordable, key=lambda e: plain[e]["recall"]) if affordable else None
    return {"queries": len(queries), "recall": float(np.mean(recalls)), "qps": qps,
            "escalated": escalated / (serving_policy.PROBE_EVERY * len(queries)), "notes": notes,
            "first_call_notes": first_report.notes, "plain": {str(e): r for e, r in plain.items()},
            "plain_ef_at_equal_cost": ef, "plain_recall_at_equal_cost": plain[ef]["recall"] if ef else None}


def run_faiss(name: str, args: argparse.Namespace) -> dict:
    """The same tune + serve code over FAISS HNSW (M 32), cost in inner products per query (IPE)."""
    from bench.faiss_policy_store import FaissHNSWStore

    data = load_dataset(name)
    started = time.perf_counter()
    store = FaissHNSWStore(name, data.keys)
    log(f"{name}: FAISS HNSW built in {time.perf_counter() - started:.0f} s")
    sample = load_vectors(args.tune_queries)[: args.tune_sample]
    queries, truth = data.test_queries[: args.test_queries], data.test_argmax[: args.test_queries]

    def cost_and_recall(answer) -> tuple[float, float]:
        store.inner_products = 0.0
        result = answer()
        return store.inner_products / len(queries), float(np.mean(result.ids[:, 0] == truth))

    plain = {}
    for ef in PLAIN_GRID:
        ipe, recall = cost_and_recall(lambda ef=ef: store.search(name, queries, LIMIT, SearchParams(hnsw_ef=ef)))
        plain[ef] = {"ipe": ipe, "recall": recall}
    out = {"dataset": name, "plain": {str(ef): row for ef, row in plain.items()}, "targets": {}}
    for target in args.targets:
        report = tuning.tune(store, name, sample, target, LIMIT, repeats=args.repeats)
        rows = []
        for row in report.rows:
            if row.policy.kind != "two-pass" and row is not report.chosen:
                continue
            ipe, recall = cost_and_recall(lambda p=row.policy: serving_policy.serve(store, name, queries, LIMIT, p)[0])
            meeting = [ef for ef in PLAIN_GRID if plain[ef]["recall"] >= recall]
            ef = min(meeting, key=lambda e: plain[e]["ipe"]) if meeting else None
            rows.append({"policy": row.name + (" (chosen)" if row is report.chosen else ""), "recall": recall,
                         "ipe": ipe, "plain_ef": ef, "plain_ipe": plain[ef]["ipe"] if ef else None,
                         "ratio": plain[ef]["ipe"] / ipe if ef else None})
            log(f"{name} FAISS @ {target}: {rows[-1]}")
        out["targets"][str(target)] = rows
    return out


def write_table(results: list[dict], out: Path) -> None:
    lines = ["| set | target | tuned policy (stored) | recall@1 | q/s | escalated | cheapest plain at that recall | "
             "its recall | q/s | ratio | ratio, plain interpolated to equal recall | p50 / p99 ms policy | "
             "p50 / p99 ms plain |", "|" + "---|" * 13]
    for r in results:
        for target, entry in r["targets"].items():
            a = entry.get("auto")
            if not a:
                continue
            lines.append(f"| {r['dataset']} | {target} | {a['describe']} | {a['recall']:.4f} | {a['qps']:,.0f} | "
                         f"{_share(a)} | ef {a['plain_ef']} | {_f(a['plain_recall'])} | {_q(a['plain_qps'])} | "
                         f"{_x(a['ratio'])} | {_x(_over(a['qps'], interpolated_plain_qps(r['plain'], a['recall'])))} | "
                         f"{_f(a['p50_ms'], 3)} / {_f(a['p99_ms'], 3)} | "
                         f"{_f(a['plain_p50_ms'], 3)} / {_f(a['plain_p99_ms'], 3)} |")
    lines += ["", "| set | policy | recall@1 | q/s | escalated | cheapest plain at that recall | q/s | ratio | "
              "ratio, interpolated |", "|" + "---|" * 9]
    for r in results:
        for p in r["policies"]:
            lines.append(f"| {r['dataset']} | {p['policy']} | {p['recall']:.4f} | {p['qps']:,.0f} | {p['escalated']:.1%} | "
                         f"ef {p['plain_ef']} ({_f(p['plain_recall'])}) | {_q(p['plain_qps'])} | {_x(p['ratio'])} | "
                         f"{_x(_over(p['qps'], interpolated_plain_qps(r['plain'], p['recall'])))} |")
    lines += ["", "| set | plain hnsw_ef | recall@1 | q/s |", "|---|---|---|---|"]
    for r in results:
        for ef, row in r["plain"].items():
            lines.append(f"| {r['dataset']} | {ef} | {row['recall']:.4f} | {row['qps']:,.0f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")


def _over(qps: float, plain_qps: float | None) -> float | None:
    return None if plain_qps is None else qps / plain_qps


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _q(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}×"


def _share(a: dict) -> str:
    return next((n.split("; ")[-1] for n in a.get("notes") or []), "-")


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plain = result["plain"]
    ax.plot([plain[e]["qps"] for e in plain], [plain[e]["recall"] for e in plain], "o-", label="plain hnsw_ef")
    for p in result["policies"]:
        ax.scatter(p["qps"], p["recall"], marker="s", label=p["policy"])
    for entry in result["targets"].values():
        if entry.get("auto"):
            ax.scatter(entry["auto"]["qps"], entry["auto"]["recall"], marker="*", s=150, color="black")
    ax.set_xscale("log")
    ax.set_xlabel("batch throughput, queries/s (Edge, test queries)")
    ax.set_ylabel("recall@1")
    ax.set_ylim(0.9, 1.0)
    ax.set_title(f"{result['dataset']} ({result['keys']:,} keys): ★ = stored policy via --mode auto")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / f"{result['dataset']}.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["squad-train", "squad-sentences"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.95, 0.99])
    parser.add_argument("--root", type=Path, default=Path("bench/results/policy/edge"))
    parser.add_argument("--tune-queries", type=Path, default=Path("bench/results/policy/tune_queries.f16.npy"))
    parser.add_argument("--tune-sample", type=int, default=6000)
    parser.add_argument("--test-queries", type=int, default=8000, help="the first N test queries")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", type=int, default=500, help="queries timed one at a time for p50/p99")
    parser.add_argument("--out", type=Path, default=Path("bench/results/policy"))
    parser.add_argument("--faiss", action="store_true", help="also run the policies over FAISS HNSW (IPE counted)")
    parser.add_argument("--table-only", action="store_true", help="re-render table.md and the plots from results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        results = json.loads((args.out / "results.json").read_text())
        write_table(results, args.out)
        for result in results:
            plot(result, args.out)
        return
    results, faiss_results = [], []
    for name in args.datasets:
        results.append(run_dataset(name, args))
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        write_table(results, args.out)
        plot(results[-1], args.out)
    if args.faiss:
        faiss.omp_set_num_threads(1)
        for name in args.datasets:
            faiss_results.append(run_faiss(name, args))
            (args.out / "faiss.json").write_text(json.dumps(faiss_results, indent=1))
    log(f"wrote {args.out}/results.json, table.md")


if __name__ == "__main__":
    main()
