"""What a second pass should be, and what should pick its queries (issue 11's design study), on Edge.

    python -m bench.escalation_study [--datasets squad-train squad-sentences] [--first-ef 16] [--second-ef 128]

Needs the policy bench's Edge store and models (README, performance section). On the first --test-queries
test questions, with recall@1 of the exact argmax:

* certificates: the share of queries that must be escalated from hnsw_ef --first-ef to --second-ef for
  recall@1 0.99, when each certificate ranks them (serving_policy.features / suspicion / fit_classifier,
  the classifiers fitted on the tune sample): s₁, σ̂ − s₁, classifiers over first-pass features with and
  without σ̂ and the model's confidence, and the oracle (exactly the first pass's misses);
* second passes: of the queries the first pass missed, the share each re-search finds and its time per
  query — x again at a larger hnsw_ef, or a ŷ probe (the model's key, L candidates rescored by <x, ·>,
  the product's prefetch).
Prints a table per dataset and writes --out/escalation_study.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.datasets import load_dataset, run_all

from amips_plugin import calibration
from amips_plugin import serving_policy as sp
from amips_plugin.adapters import SearchParams, open_store
from amips_plugin.arrays import load_vectors
from amips_plugin.inference import predict_keys
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.targets import exact_top1
from amips_plugin.truth import recall_at_1

TARGET = 0.99
LIMIT = 10


def features_with_model(store, collection: str, model, queries: np.ndarray, first_ef: int) -> tuple[np.ndarray, ...]:
    """First-pass result ids, and per query (s₁, s₁ − s₂, s₁ − s₁₀, σ̂ − s₁, p_max, σ̂, ‖x‖) (normalised by ‖x‖)."""
    first = store.search(collection, queries, sp.DEPTH, SearchParams(hnsw_ef=first_ef))
    sigma = sp.support_values(model, queries)
    with torch.no_grad():
        confidence = model.gate_inputs(torch.from_numpy(queries))[2].numpy()
    norm = np.linalg.norm(queries, axis=1)
    z = np.hstack([sp.features(queries, first.scores, sigma), np.stack([confidence, sigma / norm, norm], axis=1)])
    return first.ids[:, 0], z


def share_needed(score: np.ndarray, hit_first: np.ndarray, hit_both: np.ndarray) -> float | None:
    """The fewest queries, most suspicious first, whose escalation lifts recall@1 to TARGET (a share)."""
    order = np.argsort(-score, kind="stable")
    recall = (hit_first.sum() + np.concatenate([[0], np.cumsum((hit_both & ~hit_first)[order])])) / len(score)
    meeting = np.flatnonzero(recall >= TARGET)
    return float(meeting[0] / len(score)) if len(meeting) else None


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    data = load_dataset(name)
    collection = name.replace("-", "_")
    store = open_store(f"edge:{args.root}")
    try:
        model, _, reason = QueryRewriter(store).model_for(collection, data.keys.shape[1], len(data.keys))
        if model is None:
            raise SystemExit(f"{name}: no usable model ({reason}); train it first (README)")
        fit = np.ascontiguousarray(load_vectors(args.tune_queries)[: args.tune_sample], dtype=np.float32)
        fit_truth = exact_top1(data.keys, fit).index
        queries = np.ascontiguousarray(data.test_queries[: args.test_queries], dtype=np.float32)
        truth = data.test_argmax[: args.test_queries]

        def hits(q: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            top, z = features_with_model(store, collection, model, q, args.first_ef)
            second = store.search(collection, q, LIMIT, SearchParams(hnsw_ef=args.second_ef)).ids[:, 0]
            return top == t, (top == t) | (second == t), z

        fit_first, _, fit_z = hits(fit, fit_truth)
        hit_first, hit_both, z = hits(queries, truth)
        certificates = {"oracle (the first pass's misses)": (~hit_first).astype(float),
                        "s1": sp.suspicion("s1", z), "margin σ̂ − s1": sp.suspicion("margin", z)}
        for label, columns in (("classifier s1, gaps", [0, 1, 2]), ("classifier + σ̂ − s1", [0, 1, 2, 3]),
                               ("classifier + σ̂ − s1, confidence, σ̂, ‖x‖", [0, 1, 2, 3, 4, 5, 6])):
            classifier = calibration.fit_classifier(fit_z[:, columns], ~fit_first)
            certificates[label] = classifier.logits(z[:, columns])
        shares = {label: share_needed(score, hit_first, hit_both) for label, score in certificates.items()}

        missed = np.flatnonzero(~hit_first)
        predicted = predict_keys(model, queries[missed])
        second_passes = {}

        def measure(label: str, answer) -> None:
            started = time.perf_counter()
            ids = answer()
            second_passes[label] = {"finds": recall_at_1(ids, truth[missed]),
                                    "us_per_query": 1e6 * (time.perf_counter() - started) / len(missed)}

        for ef in (32, 64, 128, 256):
            measure(f"x at hnsw_ef {ef}",
                    lambda ef=ef: store.search(collection, queries[missed], LIMIT, SearchParams(hnsw_ef=ef)).ids)
        for ef in (16, 32, 64, 128):
            for candidates in (10, 50):
                measure(f"ŷ probe at hnsw_ef {ef}, L {candidates}", lambda ef=ef, c=candidates: store.search_prefetched(
                    collection, queries[missed], [predicted], c, LIMIT, SearchParams(hnsw_ef=ef)).ids)
    finally:
        store.close()
    print(f"{name}: hnsw_ef {args.first_ef} → {args.second_ef}; first pass recall@1 {hit_first.mean():.4f}, "
          f"both {hit_both.mean():.4f}; share escalated for recall@1 {TARGET}:")
    for label, share in shares.items():
        print(f"  {label:<44} {'unreachable' if share is None else f'{share:.2%}'}")
    print(f"  second passes over the {len(missed)} queries the first pass missed:")
    for label, row in second_passes.items():
        print(f"  {label:<44} finds {row['finds']:.3f}, {row['us_per_query']:.0f} µs a query")
    return {"dataset": name, "first_ef": args.first_ef, "second_ef": args.second_ef,
            "first_recall": float(hit_first.mean()), "both_recall": float(hit_both.mean()),
            "share_needed": shares, "missed": int(len(missed)), "second_passes": second_passes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["squad-train", "squad-sentences"])
    parser.add_argument("--root", type=Path, default=Path("bench/results/policy/edge"))
    parser.add_argument("--tune-queries", type=Path, default=Path("bench/results/policy/tune_queries.f16.npy"))
    parser.add_argument("--tune-sample", type=int, default=6000)
    parser.add_argument("--test-queries", type=int, default=8000)
    parser.add_argument("--first-ef", type=int, default=16)
    parser.add_argument("--second-ef", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench/results/policy"))
    run_all(run_dataset, parser.parse_args(), "escalation_study.json")


if __name__ == "__main__":
    main()
