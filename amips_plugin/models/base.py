"""What every amortized-MIPS model offers, and the configuration that rebuilds it.

A model maps a query x ∈ R^d to a predicted support value σ̂(x) ≈ σ(x) = max_i <x, y_i> and a
predicted optimal key ŷ(x) ≈ y*(x) = argmax_i <x, y_i>: the value and the solution of the MIPS
problem, eq. (1.1) of Olausson et al., arXiv:2603.08001 (docs/design.md §1). It reads only its own
parameters: the keys are never consulted at prediction time.
"""
from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..train_config import MODEL_KINDS


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's architecture (its weights live elsewhere).

    kind: "keynet", "supportnet" (ICNN) or "smoothmax"; dim: d; width: hidden units per layer
    (smoothmax: the rank r of its points); depth: hidden layers L (not used by smoothmax);
    reinject_every: the raw input is added back into hidden layer l when l % k == 0 (l ≥ 1);
    heads: c outputs (c > 1 is the routing variant: one support value per key cluster);
    slope/sharpness: the soft leaky ReLU's α and β; points: smoothmax's number of learned points.
    """

    kind: str
    dim: int
    width: int
    depth: int = 2
    reinject_every: int = 4
    heads: int = 1
    slope: float = 0.1
    sharpness: float = 20.0
    points: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; expected one of {MODEL_KINDS}")
        for name in ("dim", "width", "depth", "reinject_every", "heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.points < 0:
            raise ValueError(f"points must be ≥ 0, got {self.points}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**data)


def reinjects_input(layer: int, every: int) -> bool:
    """Hidden layer `layer` (0-based; layer 0 always reads x) gets the raw input added back."""
    return layer > 0 and layer % every == 0


class MIPSModel(nn.Module, abc.ABC):
    """Base class: subclasses implement `score_and_key`."""

    config: ModelConfig

    @abc.abstractmethod
    def score_and_key(self, x: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (σ̂(x), ŷ(x)) with shapes (B,) and (B, d) for a single-head model.

        `create_graph=True` keeps the graph through ŷ so a loss on ŷ can be back-propagated
        (SupportNet's ŷ is itself a gradient, so training needs double backprop).
        """

    @abc.abstractmethod
    def head_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head support values σ̂_c(x), shape (B, heads)."""

    @abc.abstractmethod
    def flops_per_query(self) -> int:
        """Multiply-adds × 2 of one query's prediction (ŷ), the serving cost."""

    def initialise_from_keys(self, keys: np.ndarray) -> None:
        """Data-dependent initialisation before training; the default has none."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def predict_keys(self, x: torch.Tensor) -> torch.Tensor:
        """ŷ(x) for inference: no graph is kept beyond what computing ŷ itself needs."""
        _, keys = self.score_and_key(x, create_graph=False)
        return keys.detach()

    def predict_with_confidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ŷ(x) without any gate, confident): models without a confidence measure trust every prediction."""
        return self.predict_keys(x), torch.ones(x.shape[0], dtype=torch.bool, device=x.device)

    def _require_single_head(self) -> None:
        if self.config.heads != 1:
            raise ValueError("keys are defined for single-head models; use head_scores() for routing heads")
