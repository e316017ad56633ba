"""Quality metrics of a key predictor, exactly as docs/design.md §2 defines them.

For a query x with true optimal key index i* = argmax_i <x, y_i> (the MIPS solution of eq. (1.1),
Olausson et al., arXiv:2603.08001) and a prediction ŷ, rank every
key by <ŷ, y_i>; let r = #{i : <ŷ, y_i> > <ŷ, y_{i*}>} (keys scoring strictly higher).

    match rate  = mean [r = 0]              (recall@1 of the predictor)
    MRR         = mean 1 / (1 + r)
    recall@k    = mean [r < k]
    E_rel       = mean ‖ŷ − y*‖ / ‖x − y*‖   (below 1 beats using the query itself as the key)

Queries that coincide with their key (‖x − y*‖ = 0) have no defined E_rel and are left out of
that mean only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .core.timing import timed
from .inference import predict_keys
from .models import MIPSModel, params_fraction
from .targets import DEFAULT_MAX_SCORES, exact_top1

RECALL_KS = (1, 5, 10)


@dataclass(frozen=True)
class Quality:
    match_rate: float
    mrr: float
    recall: dict[int, float]
    e_rel: float
    num_queries: int

    def to_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {k: v for k, v in asdict(self).items() if k != "recall"}
        out.update({f"recall@{k}": v for k, v in self.recall.items()})
        return out


def ranks_of_true_keys(
    keys: np.ndarray, predicted: np.ndarray, true_index: np.ndarray, max_scores: int = DEFAULT_MAX_SCORES
) -> np.ndarray:
    """r per query: how many keys score strictly higher than the true key under <ŷ, ·>."""
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    predicted = np.ascontiguousarray(predicted, dtype=np.float32)
    rows = max(1, max_scores // max(1, len(keys)))
    ranks = np.empty(len(predicted), dtype=np.int64)
    for start in range(0, len(predicted), rows):
        scores = predicted[start : start + rows] @ keys.T
        true_scores = scores[np.arange(len(scores)), true_index[start : start + rows]]
        ranks[start : start + rows] = (scores > true_scores[:, None]).sum(axis=1)
    return ranks


def relative_key_error(queries: np.ndarray, predicted: np.ndarray, true_keys: np.ndarray) -> float:
    """E_rel = mean ‖ŷ − y*‖ / ‖x − y*‖ over queries with x ≠ y*."""
    numerator = np.linalg.norm(predicted.astype(np.float32) - true_keys, axis=1)
    denominator = np.linalg.norm(queries.astype(np.float32) - true_keys, axis=1)
    defined = denominator > 0
    if not defined.any():
        return float("nan")
    return float(np.mean(numerator[defined] / denominator[defined]))


def evaluate_predictions(
    keys: np.ndarray,
    queries: np.ndarray,
    predicted: np.ndarray,
    true_index: np.ndarray | None = None,
    ks: tuple[int, ...] = RECALL_KS,
) -> Quality:
    """All metrics for predictions `predicted` (M, d) of queries (M, d) against keys (N, d)."""
    if predicted.shape != queries.shape:
        raise ValueError(f"predictions {predicted.shape} do not match queries {queries.shape}")
    if true_index is None:
        true_index = exact_top1(keys, queries).index
    ranks = ranks_of_true_keys(keys, predicted, true_index)
    true_keys = np.asarray(keys, dtype=np.float32)[true_index]
    return Quality(
        match_rate=float(np.mean(ranks == 0)),
        mrr=float(np.mean(1.0 / (1.0 + ranks))),
        recall={k: float(np.mean(ranks < k)) for k in ks},
        e_rel=relative_key_error(queries, predicted, true_keys),
        num_queries=int(len(queries)),
    )


def model_report(model: MIPSModel, keys: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """What `amips evaluate` prints: the metrics above against the exact answers over `keys`, the model's size
    (parameters, ρ = parameters / N·d), its FLOPs per query and prediction time, and for scale the E_rel of
    the trivial predictor ŷ = ᾱ·x (ᾱ: the mean σ(x)), whose match rate is 1 by construction."""
    predicted, predict_seconds = timed(lambda: predict_keys(model, queries))
    targets = exact_top1(keys, queries)
    alpha = float(targets.score.mean())
    return {
        **evaluate_predictions(keys, queries, predicted, targets.index).to_dict(),
        "params": model.num_parameters(),
        "params_fraction": params_fraction(model.num_parameters(), keys.shape[0], keys.shape[1]),
        "flops_per_query": model.flops_per_query(),
        "predict_seconds": round(predict_seconds, 4),
        "baseline_scaled_query_e_rel": relative_key_error(queries, alpha * queries, keys[targets.index]),
    }
