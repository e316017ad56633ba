"""Tuned serving policies against plain HNSW search on Qdrant Edge, through the product's own code (issue 11).

    nice python -m bench.policy_bench [--datasets squad-train squad-sentences] [--targets 0.95 0.99]

Per dataset: the keys are ingested into an Edge shard (cached under --root), the collection's model
(for σ̂) is the one `amips train` stored there (train it first on the fit queries, see README), and
`amips_plugin.tuning.tune` tunes a policy per target on a sample of training queries the model did not
see (`--tune-queries`). Then, on the test queries (recall@1 of the exact argmax, test_argmax.i32.npy):

* per target, right after `tune` stored its policy: plain search at every hnsw_ef of the grid, each
  certificate's best plan (`serving_policy.serve`) and the stored policy through the query path
  (`QueryRewriter.search(mode="auto")`, the manifest read and the shift guard included) are timed as
  batches, interleaved in one run, best of --repeats;
* each policy's throughput is divided by plain search's at the policy's own recall, from that same run:
  interpolated linearly in recall between the neighbouring points of plain's frontier, and at the
  cheapest grid point reaching it;
* single-query p50/p99 of the tuned policy and of that plain ef (`--single` queries, one at a time,
  both through `QueryRewriter.search`: mode auto against mode off at that hnsw_ef);
* on every squad set but squad-dev itself: new-topic queries (squad-dev's test questions, exact argmax by
  numpy over the set's keys) as a stream (`new_topics`): the policy's recall against plain search's at the
  same measured cost, and its cost against plain search's at the policy's fallback hnsw_ef.

Outputs in --out: results.json and table.md, and <dataset>.png (recall@1 against batch throughput); a
dataset not run keeps its entry from an earlier results.json there. FAISS: `bench.faiss_policy_bench`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.datasets import load_dataset

from amips_plugin.adapters import SearchParams, open_store
from amips_plugin import collection_ops
from amips_plugin import serving_policy, tuning
from amips_plugin.arrays import load_vectors
from amips_plugin.core.errors import UnknownCollectionError
from amips_plugin.core.timing import best_times, latency_ms, one_at_a_time, round_times
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.truth import recall_at_1

LIMIT = 10
PLAIN_GRID = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


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
        plain_recall = {ef: float(np.mean(store.search(collection, queries, LIMIT, SearchParams(hnsw_ef=ef)).ids[:, 0]
                                          == truth)) for ef in PLAIN_GRID}
        out: dict = {"dataset": name, "keys": len(data.keys), "test_queries": len(queries),
                     "tune_sample": len(sample), "plain_recall": {str(ef): r for ef, r in plain_recall.items()},
                     "targets": {}}
        for target in args.targets:
            out["targets"][str(target)] = run_target(store, collection, path, model, sample, queries, truth,
                                                     plain_recall, target, name, args)
            if name.startswith("squad-") and name != "squad-dev":
                entry = out["targets"][str(target)]
                entry["new_topics"] = new_topics(store, collection, data.keys, entry["auto"]["fallback_ef"], args)
                log(f"{name}: new topics @ {target}: {entry['new_topics']}")
        return out
    finally:
        store.close()


def run_target(store, collection: str, path: QueryRewriter, model, sample: np.ndarray, queries: np.ndarray,
               truth: np.ndarray, plain_recall: dict[int, float], target: float, name: str,
               args: argparse.Namespace) -> dict:
    """Tune (which publishes the policy), then time — interleaved, best of --repeats — plain search at every
    hnsw_ef of the grid, each certificate's plan served directly (`serving_policy.serve`) and the stored
    policy through the query path (`QueryRewriter.search(mode="auto")`); every ratio divides by plain
    search's throughput from this same timing run."""
    started = time.perf_counter()
    report = tuning.tune(store, collection, sample, target, LIMIT, repeats=args.tune_repeats)
    log(f"{name}: tuned for {target} in {time.perf_counter() - started:.0f} s\n{tuning.format_frontier(report)}")
    entry: dict = {"tune": report.to_dict(), "tune_seconds": time.perf_counter() - started}
    stored = serving_policy.Policy.from_manifest(report.manifest) if report.manifest else report.chosen.policy
    policies = {row.name + (" (chosen)" if row is report.chosen else ""): row.policy
                for row in report.rows if row.policy.kind == "two-pass" or row is report.chosen}

    def auto(q: np.ndarray):
        return path.search(collection, q, LIMIT, mode="auto")

    auto_result, auto_report = auto(queries)  # also checks that the query path serves the stored policy
    tasks = {**{f"plain {ef}": (lambda ef=ef: store.search(collection, queries, LIMIT, SearchParams(hnsw_ef=ef)))
                for ef in PLAIN_GRID},
             **{label: (lambda p=policy: serving_policy.serve(store, collection, queries, LIMIT, p, model))
                for label, policy in policies.items()},
             "auto": lambda: auto(queries)}
    seconds = best_times(tasks, args.repeats)
    plain = {ef: {"recall": plain_recall[ef], "qps": len(queries) / seconds[f"plain {ef}"]} for ef in PLAIN_GRID}
    entry["plain"] = {str(ef): row for ef, row in plain.items()}

    def versus_plain(recall: float, qps: float) -> dict:
        ef = cheapest_plain_at(plain, recall)
        at_equal = interpolated_plain_qps(plain, recall)
        return {"recall": recall, "qps": qps, "plain_ef": ef, "plain_recall": plain[ef]["recall"] if ef else None,
                "plain_qps": plain[ef]["qps"] if ef else None, "ratio": qps / plain[ef]["qps"] if ef else None,
                "plain_qps_interpolated": at_equal, "ratio_interpolated": qps / at_equal if at_equal else None}

    entry["policies"] = []
    for label, policy in policies.items():
        result, escalated = serving_policy.serve(store, collection, queries, LIMIT, policy, model)
        row = {"policy": label, "describe": policy.describe(), "escalated": float(escalated.mean()),
               **versus_plain(recall_at_1(result.ids, truth), len(queries) / seconds[label])}
        entry["policies"].append(row)
        log(f"{name} @ {target}: {label}: recall {row['recall']:.4f}, {row['qps']:,.0f} q/s, "
            f"{row['escalated']:.1%} escalated → {_x(row['ratio_interpolated'])} plain at equal recall")
    auto_row = versus_plain(recall_at_1(auto_result.ids, truth), len(queries) / seconds["auto"])
    single = queries[: args.single]
    p50, p99 = latency_ms(one_at_a_time(auto, single)[1])
    ef = auto_row["plain_ef"]
    plain_p50, plain_p99 = latency_ms(one_at_a_time(  # plain through the same query path (mode off), at that ef
        lambda q: path.search(collection, q, LIMIT, mode="off", params=SearchParams(hnsw_ef=ef)),
        single)[1]) if ef else (None, None)
    entry["auto"] = {"describe": stored.describe(), **auto_row,
                     "fallback_ef": stored.fallback_ef if stored.kind == "two-pass" else stored.ef,
                     "escalated": auto_report.escalated / len(queries),
                     "notes": auto_report.notes, "fallback_reason": auto_report.fallback_reason,
                     "p50_ms": p50, "p99_ms": p99, "plain_p50_ms": plain_p50, "plain_p99_ms": plain_p99}
    log(f"{name}: auto @ {target}: {entry['auto']}")
    return entry


def new_topics(store, collection: str, keys: np.ndarray, fallback_ef: int | None, args) -> dict:
    """squad-dev's test questions against the collection's keys (new topics for any other squad set), as a
    stream: the stored policy through the query path (`QueryRewriter.search(mode="auto")`, so with its shift
    guard) answers the whole set once to warm the guard; then --topic-cycles × PROBE_EVERY rounds, each one
    more auto call (so the guard's probes are included in their share) and one plain call at every hnsw_ef of
    the grid, interleaved. Time and recall are means over the rounds for both. Plain search's recall is read
    off its curve at the policy's cost, and the policy is also set beside plain search at its fallback_ef
    (where a tripped guard sends the queries: the same recall, so the two costs compare directly)."""
    queries = load_dataset("squad-dev").test_queries
    truth = np.concatenate([(queries[i:i + 512] @ keys.T).argmax(axis=1) for i in range(0, len(queries), 512)])
    path = QueryRewriter(store)
    _, first_report = path.search(collection, queries, LIMIT, mode="auto")
    recalls, escalated, notes = [], 0, []

    def auto() -> None:
        nonlocal escalated
        result, report = path.search(collection, queries, LIMIT, mode="auto")
        recalls.append(recall_at_1(result.ids, truth))
        escalated += report.escalated
        notes.extend(n for n in report.notes if n not in notes)

    tasks = {"auto": auto, **{f"plain {ef}": (lambda ef=ef: store.search(collection, queries, LIMIT,
                                                                          SearchParams(hnsw_ef=ef)))
                              for ef in PLAIN_GRID}}
    rounds = args.topic_cycles * serving_policy.PROBE_EVERY
    seconds = {name: float(times.mean()) for name, times in round_times(tasks, rounds).items()}
    qps = len(queries) / seconds["auto"]
    plain = {ef: {"recall": float(np.mean(store.search(collection, queries, LIMIT, SearchParams(hnsw_ef=ef)).ids[:, 0]
                                          == truth)),
                  "qps": len(queries) / seconds[f"plain {ef}"]}
             for ef in PLAIN_GRID}
    at_fallback = plain.get(fallback_ef) if fallback_ef is not None else None
    return {"queries": len(queries), "rounds": rounds, "recall": float(np.mean(recalls)), "qps": qps,
            "escalated": escalated / (rounds * len(queries)), "notes": notes,
            "first_call_notes": first_report.notes, "plain": {str(e): r for e, r in plain.items()},
            "plain_recall_at_equal_cost": plain_recall_at_cost(plain, qps),
            "fallback_ef": fallback_ef, "plain_at_fallback": at_fallback,
            "cost_vs_plain_at_fallback": at_fallback["qps"] / qps if at_fallback else None}


def plain_recall_at_cost(plain: dict, qps: float) -> float | None:
    """Plain search's recall at exactly the throughput `qps`: recall interpolated linearly in per-query cost
    between the neighbouring points of plain's Pareto frontier. None outside the grid's cost range."""
    points = sorted((1 / row["qps"], row["recall"]) for row in plain.values())
    frontier = [p for i, p in enumerate(points) if all(p[1] > q[1] for q in points[:i])]
    cost = 1 / qps
    if not frontier[0][0] <= cost <= frontier[-1][0]:
        return None
    return float(np.interp(cost, [p[0] for p in frontier], [p[1] for p in frontier]))


def write_table(results: list[dict], out: Path) -> None:
    lines = ["| set | target | tuned policy (stored) | recall@1 | q/s | escalated | cheapest plain at that recall | "
             "q/s | ratio | ratio at equal recall (interpolated) | p50 / p99 ms policy | p50 / p99 ms plain |",
             "|" + "---|" * 12]
    for r in results:
        for target, entry in r["targets"].items():
            a = entry["auto"]
            lines.append(f"| {r['dataset']} | {target} | {a['describe']} | {a['recall']:.4f} | "
                         f"{a['qps']:,.0f} | {a['escalated']:.1%} | ef {a['plain_ef']} ({_f(a['plain_recall'])}) | "
                         f"{_q(a['plain_qps'])} | {_x(a['ratio'])} | {_x(a['ratio_interpolated'])} | "
                         f"{_f(a['p50_ms'], 3)} / {_f(a['p99_ms'], 3)} | "
                         f"{_f(a['plain_p50_ms'], 3)} / {_f(a['plain_p99_ms'], 3)} |")
    lines += ["",
              "| set | target | plan served directly | recall@1 | q/s | escalated | cheapest plain at that recall | "
              "q/s | ratio | ratio at equal recall (interpolated) |", "|" + "---|" * 10]
    for r in results:
        for target, entry in r["targets"].items():
            for p in entry["policies"]:
                lines.append(f"| {r['dataset']} | {target} | {p['policy']} | {p['recall']:.4f} | {p['qps']:,.0f} | "
                             f"{p['escalated']:.1%} | ef {p['plain_ef']} ({_f(p['plain_recall'])}) | "
                             f"{_q(p['plain_qps'])} | {_x(p['ratio'])} | {_x(p['ratio_interpolated'])} |")
    lines += ["", "| set | target's run | plain hnsw_ef | recall@1 | q/s |", "|---|---|---|---|---|"]
    for r in results:
        for target, entry in r["targets"].items():
            for ef, row in entry["plain"].items():
                lines.append(f"| {r['dataset']} | {target} | {ef} | {row['recall']:.4f} | {row['qps']:,.0f} |")
    topics = [(r["dataset"], t, e["new_topics"]) for r in results for t, e in r["targets"].items() if "new_topics" in e]
    if topics:
        lines += ["", "| new topics on | target | policy recall@1 | q/s | escalated | plain recall at that cost | "
                  "plain at the fallback ef: recall / q/s | policy's cost / plain's there |", "|" + "---|" * 8]
        lines += [f"| {name} | {t} | {n['recall']:.4f} | {n['qps']:,.0f} | {n['escalated']:.1%} | "
                  f"{_f(n['plain_recall_at_equal_cost'])} | {_fallback(n)} | "
                  f"{_x(n.get('cost_vs_plain_at_fallback'))} |" for name, t, n in topics]
    (out / "table.md").write_text("\n".join(lines) + "\n")


def _fallback(topics: dict) -> str:
    plain = topics.get("plain_at_fallback")
    return "-" if not plain else f"ef {topics['fallback_ef']}: {plain['recall']:.4f} / {plain['qps']:,.0f}"


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _q(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}×"


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target, entry in result["targets"].items():
        plain = entry["plain"]
        ax.plot([plain[e]["qps"] for e in plain], [plain[e]["recall"] for e in plain], "o-",
                label=f"plain hnsw_ef (timed with the {target} policies)")
        for p in entry["policies"]:
            ax.scatter(p["qps"], p["recall"], marker="s", label=f"{target}: {p['policy']}")
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
    parser.add_argument("--tune-sample", type=int, default=None, help="the first N of --tune-queries (default: all)")
    parser.add_argument("--test-queries", type=int, default=8000, help="the first N test queries")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds on the test queries (best of)")
    parser.add_argument("--tune-repeats", type=int, default=2, help="tune's own timing rounds")
    parser.add_argument("--topic-cycles", type=int, default=2,
                        help="new-topic timing rounds, in units of the guard's probe period (PROBE_EVERY rounds)")
    parser.add_argument("--single", type=int, default=500, help="queries timed one at a time for p50/p99")
    parser.add_argument("--out", type=Path, default=Path("bench/results/policy"))
    parser.add_argument("--table-only", action="store_true", help="re-render table.md and the plots from results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        results = json.loads((args.out / "results.json").read_text())
        write_table(results, args.out)
        for result in results:
            plot(result, args.out)
        return
    earlier = args.out / "results.json"
    results = [r for r in json.loads(earlier.read_text()) if r["dataset"] not in args.datasets] \
        if earlier.exists() else []
    for name in args.datasets:
        results.append(run_dataset(name, args))
        earlier.write_text(json.dumps(results, indent=1))
        write_table(results, args.out)
        plot(results[-1], args.out)
    log(f"wrote {args.out}/results.json, table.md")


if __name__ == "__main__":
    main()
