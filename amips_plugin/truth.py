"""Exact answers a user supplies (`amips search --truth`), and the end-to-end recall of a search against them.

    recall@1      mean [the first id returned is the true best]
    recall@limit  mean [the true best is among the ids returned]

(docs/design.md §2, end-to-end recall of a store.) A truth file holds, per query, the true best point id,
or the true top-k ids best first (only the first is read); the ids must be the collection's point ids.
"""
from __future__ import annotations

import numpy as np

from amips_plugin.adapters.base import VectorStore

from .arrays import check_npy_size, regular_file
from .core import point_ids
from .core.errors import InputError


def load_truth(path: str, rows: int, ids: np.ndarray) -> np.ndarray:
    """True best ids, one per query (or each query's true top-k, best first), as ids comparable with `ids`
    (a search's returned ids, int64 or text)."""
    check_npy_size(regular_file(path, "--truth"), "--truth")
    try:
        truth = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"--truth: not a plain .npy array ({exc})") from None
    if truth.ndim not in (1, 2) or truth.dtype.kind not in "iuU" or len(truth) != rows:
        raise InputError(f"--truth: expected {rows} ids (or {rows} rows of top-k ids), got {truth.dtype} {truth.shape}")
    truth = truth.reshape(rows, -1)
    return point_ids.common([truth if truth.dtype.kind == "U" else truth.astype(np.int64), ids])[0]


def check_truth_ids(store: VectorStore, collection: str, best: np.ndarray) -> None:
    """InputError unless every true best id is one of the collection's points: row numbers given for a
    collection of UUIDs (or of other integer ids) would otherwise read as recall 0.0."""
    wanted = np.unique(best)
    found = set(store.existing(collection, wanted).tolist())
    missing = [i for i in wanted.tolist() if i not in found]
    if missing:
        sample = next(store.all_ids(collection, 1), np.array([], dtype=np.int64))
        kind = " (UUIDs here)" if point_ids.is_text(sample) else ""
        raise InputError(f"--truth: {len(missing):,} of its {len(wanted):,} distinct ids are not points of "
                         f"{collection!r} (e.g. {missing[0]}); it must hold the collection's point ids{kind}, not "
                         "row numbers")


def recall_at_1(ids: np.ndarray, best: np.ndarray) -> float:
    """Share of queries whose first returned id (`ids`: (M, k), or (M,) first ids) is the true best."""
    first = ids[:, 0] if ids.ndim == 2 else ids
    return float(np.mean(first == best)) if len(first) else float("nan")


def recall_at_limit(ids: np.ndarray, best: np.ndarray) -> float:
    """Share of queries whose true best is among the returned ids (M, limit)."""
    return float(np.mean((ids == best[:, None]).any(axis=1))) if len(ids) else float("nan")
