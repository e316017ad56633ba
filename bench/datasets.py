"""Load the real embedding sets in ../shared/data/<name>/ (docs/design.md §6)."""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amips_plugin.arrays import load_vectors
from amips_plugin.synthetic import gaussian_mixture
from amips_plugin.targets import exact_top1

DATA_ROOT = Path(os.environ.get("AMIPS_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@dataclass(frozen=True)
class Dataset:
    name: str
    keys: np.ndarray
    train_queries: np.ndarray
    test_queries: np.ndarray
    test_argmax: np.ndarray


SYNTHETIC_SETS = {"synthetic-100k": 100_000, "synthetic-1m": 1_000_000}
SYNTHETIC_DIM, SYNTHETIC_CLUSTERS, SYNTHETIC_SEED = 128, 256, 7
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 20_000, 2_000


def synthetic_dataset(name: str, seed: int = SYNTHETIC_SEED) -> Dataset:
    """A seeded Gaussian mixture with log-normal key norms (MIPS ≠ cosine); queries from the same
    mixture, the first SYNTHETIC_TRAIN for training and the rest for testing, exact answers by FAISS."""
    keys, queries = gaussian_mixture(SYNTHETIC_SETS[name], SYNTHETIC_TRAIN + SYNTHETIC_TEST, SYNTHETIC_DIM,
                                     clusters=SYNTHETIC_CLUSTERS, seed=seed)
    test = queries[SYNTHETIC_TRAIN:]
    return Dataset(name=name, keys=keys, train_queries=queries[:SYNTHETIC_TRAIN], test_queries=test,
                   test_argmax=exact_top1(keys, test).index)


def _linked(path: Path) -> Path:
    """`path`, or the file it names when a copy turned its symbolic link into a short text file holding
    the link's target (squad-sentences' queries are squad-train's, linked as ../squad-train/...)."""
    if path.stat().st_size < 1024 and not path.read_bytes().startswith(b"\x93NUMPY"):
        return path.parent / path.read_text().strip()
    return path


def load_dataset(name: str) -> Dataset:
    folder = DATA_ROOT / name
    if not folder.is_dir():
        raise SystemExit(f"dataset {name!r} not found under {DATA_ROOT} (set AMIPS_DATA to its parent folder)")
    return Dataset(
        name=name,
        keys=load_vectors(folder / "keys.f16.npy"),
        train_queries=load_vectors(_linked(folder / "train_queries.f16.npy")),
        test_queries=load_vectors(_linked(folder / "test_queries.f16.npy")),
        test_argmax=np.load(folder / "test_argmax.i32.npy", allow_pickle=False).astype(np.int64),
    )


def run_all(run_dataset: Callable[[str, argparse.Namespace], dict], args: argparse.Namespace, filename: str) -> None:
    """Run `run_dataset` for each of args.datasets and write the list of results to args.out / filename."""
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_dataset(name, args) for name in args.datasets]
    (args.out / filename).write_text(json.dumps(results, indent=1))
