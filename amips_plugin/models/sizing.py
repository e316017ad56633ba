"""Size a model from a parameter budget: params(width) ≈ ρ·N·d (docs/design.md §1).

Every parameter counts, the input skip and re-injections included. The count is read off the
architecture itself (built on PyTorch's "meta" device, which allocates nothing), so it can never
drift from the model code.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .base import ModelConfig
from .factory import build_model

MAX_WIDTH = 1 << 16


def count_parameters(config: ModelConfig) -> int:
    with torch.device("meta"):
        return build_model(config).num_parameters()


def width_for_budget(config: ModelConfig, budget: int) -> int:
    """The largest width whose parameter count stays within `budget` (at least 1)."""
    if budget < 1:
        raise ValueError(f"parameter budget must be ≥ 1, got {budget}")
    low, high = 1, MAX_WIDTH
    while low < high:
        mid = (low + high + 1) // 2
        if count_parameters(replace(config, width=mid)) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def params_fraction(num_parameters: int, num_keys: int, dim: int) -> float:
    """ρ = parameters / (N·d): the model's size as a fraction of the key table's."""
    return num_parameters / float(num_keys * dim)
