"""Core benchmark: KeyNet, SupportNet (ICNN) and SmoothMax at ρ ∈ {0.005, 0.02, 0.2} on a real set's test queries.

    python -m bench.core [--dataset squad-dev] [--rho 0.005 0.02 0.2] [--out bench/results/core.json]

Prints one table row per model: parameters, ρ, match rate, MRR, recall@10, E_rel, training wall
time and steps; first the trivial predictors ŷ = x and ŷ = ᾱ·x measured in the same run (their
match rate is 1 by construction, so E_rel at a kept match rate is what a model must improve).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.datasets import load_dataset
from bench.sweep_core import train_and_test, trivial_baselines

COLUMNS = ("model", "params", "rho", "test_match_rate", "test_mrr", "test_recall@10", "test_e_rel", "seconds",
           "steps_run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="squad-dev")
    parser.add_argument("--rho", type=float, nargs="+", default=[0.005, 0.02, 0.2])
    parser.add_argument("--models", nargs="+", default=["keynet", "supportnet", "smoothmax"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/core.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)

    print(f"# {data.name}: {len(data.keys)} keys, {len(data.train_queries)} train / "
          f"{len(data.test_queries)} test queries")
    print(" | ".join(f"{c:>15}" for c in COLUMNS))
    rows = []
    for name, quality in trivial_baselines(data.keys, data.test_queries, data.test_argmax).items():
        row = {"model": name, "params": 0, "rho": 0.0, **{f"test_{k}": v for k, v in quality.items()},
               "seconds": 0.0, "steps_run": 0}
        rows.append(row)
        print(" | ".join(_cell(row.get(c)) for c in COLUMNS), flush=True)
    for kind in args.models:
        for rho in args.rho:
            row = {"model": kind, **train_and_test(data, {"model": kind, "params_fraction": rho})}
            rows.append(row)
            print(" | ".join(_cell(row.get(c)) for c in COLUMNS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:>15.4f}"
    return f"{str(value)[:15]:>15}"


if __name__ == "__main__":
    main()
