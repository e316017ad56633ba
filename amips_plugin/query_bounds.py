"""Bounds on what a caller asks of the query path, checked before any store call or model sees it.

limit ∈ [1, MAX_LIMIT], candidates ∈ [1, MAX_CANDIDATES] (or None: the default), hnsw_ef ∈
[1, MAX_HNSW_EF], oversampling ∈ [1, MAX_OVERSAMPLING] and finite. Queries must be finite (arrays.
check_vectors) with ‖x‖ ≤ MAX_QUERY_NORM = 1e18: a model computes ⟨x, m⟩ and ‖x‖² in float32, whose
largest value is 3.4e38, so a larger norm overflows to inf and the rewrite to NaN. Such a query is
refused (InputError), not silently answered: scaling it would change the scores it gets back.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from amips_plugin.adapters.base import SearchParams

from .arrays import ACCEPTED_DTYPES, check_vectors
from .core.errors import InputError
from .core.limits import MAX_CANDIDATES, MAX_HNSW_EF, MAX_LIMIT, MAX_OVERSAMPLING, MAX_QUERY_NORM


def _integer(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not low <= int(value) <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high:,}], got {str(value)[:40]}")
    return int(value)


def check_search_inputs(limit: object, candidates: object, params: SearchParams) -> None:
    """InputError (one line) for any knob out of its range."""
    _integer(limit, "limit", 1, MAX_LIMIT)
    if candidates is not None:
        _integer(candidates, "candidates", 1, MAX_CANDIDATES)
    if params.hnsw_ef is not None:
        _integer(params.hnsw_ef, "hnsw_ef", 1, MAX_HNSW_EF)
    oversampling = params.oversampling
    if oversampling is not None and (isinstance(oversampling, bool) or not isinstance(oversampling, Real)
                                     or not math.isfinite(oversampling) or not 1 <= oversampling <= MAX_OVERSAMPLING):
        raise InputError(f"oversampling must be a number in [1, {MAX_OVERSAMPLING:g}], got {str(oversampling)[:40]}")


def check_query_norms(queries: np.ndarray) -> None:
    """InputError when a (finite, float32) query's norm exceeds MAX_QUERY_NORM (computed in float64). No
    norm is computed when no coordinate is large enough for one to (‖x‖ ≤ √d · max |xᵢ|)."""
    if queries.size and float(np.abs(queries).max()) * math.sqrt(queries.shape[1]) <= MAX_QUERY_NORM:
        return
    norms = np.linalg.norm(queries.astype(np.float64), axis=1)
    bad = np.flatnonzero(norms > MAX_QUERY_NORM)
    if len(bad):
        raise InputError(f"{len(bad)} quer{'y has' if len(bad) == 1 else 'ies have'} a norm above {MAX_QUERY_NORM:g} "
                         f"(e.g. row {bad[0]}: {norms[bad[0]]:.3g}), which float32 arithmetic cannot square")


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """The query path's check of its (n, d) queries, returned as float32: `check_vectors` and
    `check_query_norms` in one pass when they pass. Σᵢ‖xᵢ‖² in float32 is finite and ≤ MAX_QUERY_NORM² exactly
    when every coordinate is finite and, the terms being non-negative, then every ‖xᵢ‖ ≤ MAX_QUERY_NORM
    (1e36 is far below float32's largest value, so no valid sum overflows); otherwise the two checks run one by
    one and name the problem (a large batch of large queries whose sum alone is too large passes them)."""
    if queries.ndim == 2 and queries.shape[1] == dim and queries.shape[0] and queries.dtype.type in ACCEPTED_DTYPES:
        checked = np.ascontiguousarray(queries, dtype=np.float32)
        total = float(np.vdot(checked, checked))  # accumulated in float32: inf (never a wrong finite sum) on overflow
        if math.isfinite(total) and total <= MAX_QUERY_NORM ** 2:
            return checked
    checked = check_vectors(queries, "queries", dim=dim)
    check_query_norms(checked)
    return checked
