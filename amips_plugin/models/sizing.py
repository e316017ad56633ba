"""Size a model from a parameter budget: params(width) ≈ ρ·N·d (docs/design.md §1).

Every parameter counts, the input skip and re-injections included. The count is read off the
architecture itself (built on PyTorch's "meta" device, which allocates nothing), so it can never
drift from the model code.

A model serves one collection, so its size is bounded by the collection's: at most
MAX_PARAMS_PER_KEY_VALUE·N·d + PARAMS_FLOOR parameters (ρ ≤ 4, where `train` uses ρ = 0.2 by default;
the floor leaves small collections room for fixed-width models). `train` refuses a larger architecture
and the query path a larger stored model, before its blob is read (`oversize_reason`): its memory and
time per query grow with its size, not with the collection's.
"""
from __future__ import annotations

import functools
from dataclasses import replace

import torch

from .base import ModelConfig
from .factory import build_model

MAX_WIDTH = 1 << 16
MAX_PARAMS_PER_KEY_VALUE = 4  # parameters per stored key coordinate (N·d), at most
PARAMS_FLOOR = 1 << 22  # parameters any collection's model may have (16 MiB in fp32)


@functools.lru_cache(maxsize=256)  # the query path asks once per manifest read
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


def parameter_bound(num_keys: int, dim: int) -> int:
    """The most parameters a model of a collection of `num_keys` keys of dimension `dim` may have."""
    return MAX_PARAMS_PER_KEY_VALUE * num_keys * dim + PARAMS_FLOOR


def oversize_reason(config: ModelConfig, num_keys: int) -> str | None:
    """Why a model of `config` is too large for a collection of `num_keys` keys (one line), or None."""
    params, bound = count_parameters(config), parameter_bound(num_keys, config.dim)
    if params <= bound:
        return None
    return (f"the model has {params:,} parameters, over the {bound:,} allowed for {num_keys:,} keys of dimension "
            f"{config.dim} ({MAX_PARAMS_PER_KEY_VALUE}·N·d + {PARAMS_FLOOR:,}); train a smaller one "
            "(--params-fraction, --points, --width)")
