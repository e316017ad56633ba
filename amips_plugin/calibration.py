"""Tune-time calibration of a two-pass serving policy (amips_plugin/serving_policy.py serves it): the
classifier certificate's fit, the guard's feature range and the threshold, each from queries with
exact answers. Nothing here runs at query time.

Threshold (`calibrate_threshold`): on queries with exact answers, escalating the m most suspicious ones
gives recall r(m) = (Σ_{kept} hit₁ + Σ_{escalated} hit₂) / n, non-decreasing in m. The threshold chosen
escalates the fewest queries whose Wilson lower bound on r(m) (one-sided, z = 1.645) still clears the
target R: scanned from the fewest escalations up it is a fixed-sequence test, so on queries that did not
pick the plan (amips_plugin/tuning.py's certify half) the target holds on unseen queries of the same
distribution with ≈ 95% confidence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .serving_policy import Classifier

Z_ONE_SIDED_95 = 1.645
GUARD_QUANTILES = (0.001, 0.999)  # features outside this calibration range always escalate
_RIDGE = 1e-3  # L2 penalty of the logistic regression (standardised features)


def wilson_lower_bound(successes: float, n: int, z: float = Z_ONE_SIDED_95) -> float:
    """Lower end of the Wilson score interval for a binomial proportion, one-sided at z."""
    if n <= 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def fit_classifier(z: np.ndarray, missed: np.ndarray, iterations: int = 25) -> Classifier:
    """Newton's method (IRLS) on the L2-penalised logistic loss; z (n, F), missed (n,) bool."""
    mean, scale = z.mean(axis=0), z.std(axis=0) + 1e-9
    a = np.hstack([np.ones((len(z), 1)), (z - mean) / scale])
    y = missed.astype(np.float64)
    w = np.zeros(a.shape[1])
    penalty = _RIDGE * len(z) * np.diag([0.0] + [1.0] * (a.shape[1] - 1))
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        gradient = a.T @ (p - y) + penalty @ w
        hessian = (a * (p * (1 - p))[:, None]).T @ a + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Classifier(tuple(mean.tolist()), tuple(scale.tolist()), tuple(w.tolist()))


@dataclass(frozen=True)
class Calibration:
    threshold: float
    escalated: int  # queries escalated on the calibration slice
    recall: float  # recall@1 on it
    lower_bound: float


def calibrate_threshold(score: np.ndarray, hit_first: np.ndarray, hit_second: np.ndarray, target: float,
                        z: float = Z_ONE_SIDED_95, always: np.ndarray | None = None) -> Calibration | None:
    """The threshold escalating the fewest queries whose recall's Wilson lower bound clears `target`.

    score: c(x) per query; hit_first / hit_second: the first pass / the merged two passes found the
    argmax; always: queries the guard escalates whatever the threshold. None when even escalating
    every query with a finite cut falls short (the second pass alone is then the cheaper plan).
    """
    n = len(score)
    always = np.zeros(n, dtype=bool) if always is None else always
    base = float(np.sum(np.where(always, hit_second, hit_first)))
    forced = int(always.sum())
    free = np.flatnonzero(~always)
    order = free[np.argsort(-score[free], kind="stable")]
    ranked = score[order]
    gains = np.concatenate([[0.0], np.cumsum(hit_second[order].astype(float) - hit_first[order])])
    for m in range(len(order)):  # escalate order[:m]; a cut needs ranked[m-1] > ranked[m]
        if m and not ranked[m - 1] > ranked[m]:
            continue
        bound = wilson_lower_bound(base + gains[m], n, z)
        if bound >= target:
            threshold = float(ranked[m]) if m == 0 else float((ranked[m - 1] + ranked[m]) / 2)
            if m == 0 and len(ranked):
                threshold = float(np.nextafter(ranked[0], np.inf))
            return Calibration(threshold, m + forced, (base + gains[m]) / n, bound)
    return None


def guard_range(z: np.ndarray, columns: list[int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The calibration range of the used feature columns (GUARD_QUANTILES), finite rows only."""
    used = z[:, columns]
    used = used[np.all(np.isfinite(used), axis=1)]
    low, high = np.quantile(used, GUARD_QUANTILES, axis=0)
    return tuple(low.tolist()), tuple(high.tolist())
