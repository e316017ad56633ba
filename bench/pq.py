"""Anisotropic (score-aware) PQ against plain PQ at equal bits per key.

    python -m bench.pq [--sets squad-dev synthetic-100k synthetic-100k-wide] [--thresholds 0.2]
                       [--ablation] [--out bench/results/pq.json]

For each set and number of subspaces m (8·m bits per key): FAISS IndexPQ (its own training), plain
PQ (k-means codebooks, nearest-centroid codes) and anisotropic PQ (codes and codebooks re-fitted
under the score-aware loss from that same start), all scored by asymmetric distance. Reported on held-out queries:
recall1@10 (the true best key within the top 10 by PQ score) and recall10@10 (overlap of the PQ top 10
with the true top 10); encode s: build seconds (FAISS: train + add; the other two rows: one call
that builds both, k-means start plus the anisotropic rounds). --thresholds are τ, the anisotropic
threshold as a fraction of the largest key norm (T = τ·max‖x‖). The synthetic sets are seeded
Gaussian mixtures (100k keys, 2,000 queries, d = 128, 64 clusters) whose key norms vary
log-normally: σ = 0.25 (synthetic-100k, the generator's default) or σ = 0.5 (synthetic-100k-wide).

--ablation adds, from one more k-means start, the anisotropic rounds with each part of the current
rule undone: the threshold and weight used before (T = 0.2 × the median key norm, the large-d η,
3 rounds; t capped at 0.99 as now), then the median threshold alone, the large-d η alone, and 3
rounds alone (encode s: all four together).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from bench.datasets import load_dataset

from amips_plugin.synthetic import gaussian_mixture  # noqa: E402
from amips_plugin.compression.anisotropic_pq import (ProductCodes, anisotropic_pq, anisotropic_weight,  # noqa: E402
                                        refine_anisotropic, score_threshold, train_codebooks)

SUBSPACES = {"squad-dev": (16, 24, 48), "synthetic-100k": (8, 16, 32), "synthetic-100k-wide": (8, 16, 32)}
NORM_SIGMA = {"synthetic-100k": 0.25, "synthetic-100k-wide": 0.5}


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name in NORM_SIGMA:
        return gaussian_mixture(num_keys=100_000, num_queries=2_000, dim=128, clusters=64, seed=7,
                                norm_sigma=NORM_SIGMA[name])
    data = load_dataset(name)
    return data.keys, data.test_queries


def recalls(top: np.ndarray, truth_top10: np.ndarray) -> tuple[float, float]:
    r1 = float(np.mean([truth_top10[i, 0] in top[i, :10] for i in range(len(top))]))
    r10 = float(np.mean([len(set(top[i, :10]) & set(truth_top10[i])) / 10 for i in range(len(top))]))
    return r1, r10


def ablation(keys: np.ndarray, m: int) -> dict[str, ProductCodes]:
    """Anisotropic codes with one part of the rule undone at a time (and all of them: the rule before)."""
    codebooks, plain = train_codebooks(keys, m)
    norms, dim = np.linalg.norm(keys, axis=1), keys.shape[1]
    median_t, max_t = 0.2 * float(np.median(norms)), score_threshold(keys, 0.2)
    variants = {"before: median T, large-d, 3 rds": (median_t, False, 3), "median T": (median_t, True, 8),
                "large-d η": (max_t, False, 8), "3 rounds": (max_t, True, 3)}
    return {name: refine_anisotropic(keys, codebooks, plain, anisotropic_weight(norms, t, dim, exact=exact), rounds)
            for name, (t, exact, rounds) in variants.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["squad-dev", "synthetic-100k", "synthetic-100k-wide"])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.2])
    parser.add_argument("--ablation", action="store_true",
                        help="also the anisotropic rounds with each part of the old rule")
    parser.add_argument("--out", type=Path, default=Path("bench/results/pq.json"))
    args = parser.parse_args()
    rows = []
    print(f"{'set':>19} {'bits':>5} {'method':>36} {'recall1@10':>11} {'recall10@10':>12} {'encode s':>9}")
    for name in args.sets:
        keys, queries = load(name)
        exact = queries @ keys.T
        top = np.argpartition(-exact, 9, axis=1)[:, :10]
        truth = np.take_along_axis(top, np.argsort(-np.take_along_axis(exact, top, axis=1), axis=1), axis=1)
        del exact
        for m in SUBSPACES.get(name, (16,)):
            started = time.perf_counter()
            index = faiss.IndexPQ(keys.shape[1], m, 8, faiss.METRIC_INNER_PRODUCT)
            index.train(keys)
            index.add(keys)
            results = {"faiss IndexPQ": (index.search(queries, 10)[1], time.perf_counter() - started)}
            for threshold in args.thresholds:
                started = time.perf_counter()
                scored, plain = anisotropic_pq(keys, m, relative_threshold=threshold)
                seconds = time.perf_counter() - started
                results.setdefault("plain PQ (k-means)", (plain.search(queries, 10), seconds))
                results[f"anisotropic τ={threshold:g}"] = (scored.search(queries, 10), seconds)
            if args.ablation:
                started = time.perf_counter()
                variants = ablation(keys, m)
                seconds = time.perf_counter() - started
                results.update({f"ablation: {name}": (codes.search(queries, 10), seconds)
                                for name, codes in variants.items()})
            for method, (top, seconds) in results.items():
                r1, r10 = recalls(top, truth)
                rows.append({"set": name, "bits": 8 * m, "method": method, "recall1@10": r1, "recall10@10": r10,
                             "encode_seconds": seconds})
                print(f"{name:>19} {8 * m:>5} {method:>36} {r1:>11.4f} {r10:>12.4f} {seconds:>9.1f}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))  # after every bit rate: a cut-off run keeps its rows


if __name__ == "__main__":
    main()
