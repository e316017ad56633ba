"""Synthetic collections: Gaussian mixtures with varying norms, so MIPS ≠ cosine (docs/design.md §6)."""
from __future__ import annotations

import numpy as np


def gaussian_mixture(num_keys: int, num_queries: int, dim: int, clusters: int = 16, seed: int = 0,
                     spread: float = 0.3, norm_sigma: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Keys and queries drawn around shared cluster centres; key norms vary log-normally.

    `norm_sigma` is the log-normal's σ: each key is scaled by exp(N(0, σ²)); larger values spread
    the key norms wider (the default keeps every existing set unchanged).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) / np.sqrt(dim)

    def draw(count: int) -> np.ndarray:
        picks = rng.integers(0, clusters, size=count)
        return centres[picks] + spread * rng.normal(size=(count, dim)) / np.sqrt(dim)

    keys = draw(num_keys) * rng.lognormal(0.0, norm_sigma, size=(num_keys, 1))
    return keys.astype(np.float32), draw(num_queries).astype(np.float32)
