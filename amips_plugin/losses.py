"""Training losses (docs/design.md §1; Olausson et al., arXiv:2603.08001: the KeyNet and SupportNet losses).

σ(x) = max_i <x, y_i> and y*(x) = argmax_i <x, y_i> are the value and the solution of the MIPS
problem, the paper's eq. (1.1). Both models are trained with the same form, on a batch of B queries in R^d:

    L = w_s · mean_b (σ̂(x_b) − σ(x_b))²  +  w_t · mean_{b,j} (ŷ(x_b)_j − y*(x_b)_j)²

KeyNet: σ̂ = <g(x), x> (score consistency / Euler), ŷ = g(x) (key regression).
SupportNet: σ̂ = f(x) (score regression), ŷ = ∇f(x) (gradient matching, double backprop).
The key term averages over the d coordinates too (the "/d" scaling); w_s = 0.01, w_t = 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .train_config import KEY_WEIGHT, SCORE_WEIGHT


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    score: torch.Tensor
    key: torch.Tensor


def amortized_mips_loss(
    predicted_scores: torch.Tensor,
    predicted_keys: torch.Tensor,
    target_scores: torch.Tensor,
    target_keys: torch.Tensor,
    score_weight: float = SCORE_WEIGHT,
    key_weight: float = KEY_WEIGHT,
) -> LossParts:
    """Weighted score loss plus key loss; scores are (B,), keys (B, d)."""
    if predicted_keys.shape != target_keys.shape or predicted_scores.shape != target_scores.shape:
        raise ValueError(
            f"shape mismatch: keys {tuple(predicted_keys.shape)} vs {tuple(target_keys.shape)}, "
            f"scores {tuple(predicted_scores.shape)} vs {tuple(target_scores.shape)}"
        )
    score = (predicted_scores - target_scores).pow(2).mean()
    key = (predicted_keys - target_keys).pow(2).mean()
    return LossParts(total=score_weight * score + key_weight * key, score=score, key=key)
