"""The soft leaky ReLU used by both networks (docs/design.md §1, the reference defaults).

    a(z) = α·z + (1 − α)·softplus(β·z)/β          α = 0.1, β = 20 (reference defaults)

It is convex and strictly increasing (a'(z) ∈ (α, 1)), which is what an input-convex network needs.
It also has a non-negative tangent intercept,

    a(z) − z·a'(z) = (1 − α)/β · H(sigmoid(β·z)) ≥ 0      (H: binary entropy in nats),

which makes its perspective t·a(z/t) non-decreasing in t; `SupportNet` relies on that to keep
the 1-homogeneous wrapper convex (see `supportnet.py`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SoftLeakyReLU(nn.Module):
    """a(z) = α·z + (1 − α)·softplus(β·z)/β; parameter-free."""

    def __init__(self, slope: float = 0.1, sharpness: float = 20.0) -> None:
        super().__init__()
        if not 0.0 < slope < 1.0:
            raise ValueError(f"slope must lie in (0, 1), got {slope}")
        if sharpness <= 0.0:
            raise ValueError(f"sharpness must be positive, got {sharpness}")
        self.slope = slope
        self.sharpness = sharpness

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.slope * z + (1.0 - self.slope) * F.softplus(self.sharpness * z) / self.sharpness

    def extra_repr(self) -> str:
        return f"slope={self.slope}, sharpness={self.sharpness}"
