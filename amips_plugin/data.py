"""Training data: split by base query, noise augmentation, exact re-targeting (docs/design.md §1).

Each base query gets m noisy copies x + ε, ε ~ N(0, s² I) (s = 0.02 by default), re-normalised
when the collection is unit-norm, and every copy's target is recomputed exactly. The split into
training and validation is made on base queries *before* augmentation, so no copy of a query
ever lands on both sides.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .targets import exact_top1

UNIT_NORM_TOLERANCE = 1e-2
NORM_CHUNK_ROWS = 1 << 14  # rows per pass: the squares are never held for a whole key table


def is_unit_norm(vectors: np.ndarray, tolerance: float = UNIT_NORM_TOLERANCE) -> bool:
    for start in range(0, len(vectors), NORM_CHUNK_ROWS):
        norms = np.linalg.norm(vectors[start : start + NORM_CHUNK_ROWS], axis=1)
        if not np.all(np.abs(norms - 1.0) <= tolerance):
            return False
    return True


def split_by_base_query(num_queries: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle base-query indices and cut off a validation share (at least one query each side)."""
    if num_queries < 2:
        raise ValueError(f"need at least 2 queries to split into training and validation, got {num_queries}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
    order = np.random.default_rng(seed).permutation(num_queries)
    num_validation = min(num_queries - 1, max(1, round(validation_fraction * num_queries)))
    return np.sort(order[num_validation:]), np.sort(order[:num_validation])


def augment(
    queries: np.ndarray, copies: int, noise_std: float, normalise: bool, rng: np.random.Generator
) -> np.ndarray:
    """The base queries followed by `copies` noisy copies of each; shape ((1 + copies)·M, d).

    Written into one preallocated float32 array, copy by copy: beyond the result, only one copy's
    noise is ever held (the values are those of drawing each copy's noise whole, as before)."""
    if copies < 0:
        raise ValueError(f"copies must be ≥ 0, got {copies}")
    queries = np.asarray(queries, dtype=np.float32)
    out = np.empty(((1 + copies) * len(queries), queries.shape[1]), dtype=np.float32)
    out[: len(queries)] = queries
    for index in range(1, copies + 1):
        block = out[index * len(queries) : (index + 1) * len(queries)]
        np.add(queries, rng.normal(0.0, noise_std, size=queries.shape).astype(np.float32), out=block)
        if normalise:
            block /= np.linalg.norm(block, axis=1, keepdims=True).clip(min=1e-12)
    return out


@dataclass
class TargetedQueries:
    """Queries with their exact targets, as tensors ready for training or validation."""

    queries: torch.Tensor  # (M, d)
    target_index: torch.Tensor  # (M,) argmax key index
    target_scores: torch.Tensor  # (M,) σ(x)

    def __len__(self) -> int:
        return self.queries.shape[0]

    @classmethod
    def build(cls, keys: np.ndarray, queries: np.ndarray, device: torch.device) -> "TargetedQueries":
        targets = exact_top1(keys, queries, device=device)
        return cls(
            queries=torch.from_numpy(queries).to(device),
            target_index=torch.from_numpy(targets.index).to(device),
            target_scores=torch.from_numpy(targets.score).to(device),
        )
