"""Load the real embedding sets in ../shared/data/<name>/ (DESIGN.md §6)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amips_plugin.arrays import load_vectors

DATA_ROOT = Path(os.environ.get("AMIPS_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@dataclass(frozen=True)
class Dataset:
    name: str
    keys: np.ndarray
    train_queries: np.ndarray
    test_queries: np.ndarray
    test_argmax: np.ndarray


def load_dataset(name: str) -> Dataset:
    folder = DATA_ROOT / name
    if not folder.is_dir():
        raise SystemExit(f"dataset {name!r} not found under {DATA_ROOT} (set AMIPS_DATA to its parent folder)")
    return Dataset(
        name=name,
        keys=load_vectors(folder / "keys.f16.npy"),
        train_queries=load_vectors(folder / "train_queries.f16.npy"),
        test_queries=load_vectors(folder / "test_queries.f16.npy"),
        test_argmax=np.load(folder / "test_argmax.i32.npy", allow_pickle=False).astype(np.int64),
    )
