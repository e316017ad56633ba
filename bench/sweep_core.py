"""Hyper-parameter sweep for the core models on a real set: one JSON line per run.

    python -m bench.sweep_core squad-dev '{"model": "keynet", "depth": 2}' '{"depth": 3}' ... \
        --out bench/results/sweep.jsonl

Each argument is a TrainConfig override; every run trains on the set's train queries and is
scored on its test queries (never seen in training), next to the trivial predictors ŷ = x and
ŷ = ᾱ·x measured in the same run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench.datasets import load_dataset

from amips_plugin.inference import predict_keys  # noqa: E402
from amips_plugin.metrics import evaluate_predictions  # noqa: E402
from amips_plugin.models import params_fraction  # noqa: E402
from amips_plugin.targets import exact_top1  # noqa: E402
from amips_plugin.training import TrainConfig, fit  # noqa: E402


def trivial_baselines(keys: np.ndarray, queries: np.ndarray, argmax: np.ndarray) -> dict[str, dict]:
    alpha = float(exact_top1(keys, queries).score.mean())
    return {
        "query_itself": evaluate_predictions(keys, queries, queries, argmax).to_dict(),
        f"scaled_query_alpha_{alpha:.3f}": evaluate_predictions(keys, queries, alpha * queries, argmax).to_dict(),
    }


def train_and_test(data, overrides: dict) -> dict:
    """Fit with TrainConfig(**overrides) on the train queries; score on the unseen test queries."""
    result = fit(data.keys, data.train_queries, TrainConfig(**overrides), progress=False)
    test = evaluate_predictions(data.keys, data.test_queries, predict_keys(result.model, data.test_queries),
                                data.test_argmax)
    return {
        "dataset": data.name, "config": overrides,
        "width": result.model.config.width, "params": result.model.num_parameters(),
        "rho": params_fraction(result.model.num_parameters(), *data.keys.shape),
        "steps_run": result.steps_run, "seconds": round(result.seconds, 1),
        "val_match_rate": result.validation.match_rate, "val_e_rel": result.validation.e_rel,
        **{f"test_{k}": v for k, v in test.to_dict().items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("overrides", nargs="+", help="JSON objects of TrainConfig fields")
    parser.add_argument("--out", type=Path, default=Path("bench/results/sweep.jsonl"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"dataset": data.name,
                      "baselines": trivial_baselines(data.keys, data.test_queries, data.test_argmax)}))
    for override in args.overrides:
        row = train_and_test(data, json.loads(override))
        print(json.dumps(row), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

if __name__ == "__main__":
    main()
