"""SupportNet: a convex, positively 1-homogeneous model of the support function σ(x) = max_i <x, y_i>, the
value of eq. (1.1) (Olausson et al., arXiv:2603.08001; docs/design.md §1, with the convexity conditions).

The inner network h is an input-convex neural network (ICNN, Amos et al. 2017) on the unit sphere:

    z_0 = W_0 u + b_0⁺
    z_l = V_l⁺ a(z_{l−1}) + b_l⁺ + [A_l u  if l % k == 0]            l = 1 … L−1
    h(u) = <w_out⁺, a(z_{L−1})> + <v, u> + c⁺                          (final layer linear)

and the model is its 1-homogeneous extension (the paper's wrapper)

    f(x) = ‖x‖ · h(x / ‖x‖),        ŷ(x) = ∇f(x)  (autograd),        <∇f(x), x> = f(x)  (Euler).

Convexity of f is guaranteed by construction, not hoped for. Writing t = ‖x‖, every layer of f
is the perspective t·a(z/t) of the activation applied to (t·z_l, t), and

  * the perspective of a convex a is jointly convex in (z, t);
  * it is non-decreasing in z (a' > 0) and in t, because a(v) − v·a'(v) ≥ 0 for the soft leaky
    ReLU (see activations.py);
  * t = ‖x‖ is convex, W_0 x and A_l x are linear, and V⁺, w_out⁺ ≥ 0 keep sums of convex terms
    convex; a bias becomes b·‖x‖, convex only when b ≥ 0.

So every weight that multiplies a hidden unit and every bias is non-negative; they are
reparametrised as softplus(raw) (marked "⁺" above). Without the sign constraint on the biases,
h would be convex yet f need not be (h(u) = <v, u> − 1 gives the concave f(x) = <v, x> − ‖x‖).
Quantizing the raw values keeps the guarantee, since softplus of anything is non-negative.
"""
from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from .activations import SoftLeakyReLU
from .base import MIPSModel, ModelConfig, reinjects_input

_NORM_FLOOR = 1e-12


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class NonNegativeLinear(nn.Module):
    """y = softplus(W_raw) z (+ softplus(b_raw)): a linear map with non-negative weights and bias."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        # Positive weights with mean 1/in_features: the next layer starts near the average of the
        # previous one's units, so depth neither explodes nor kills the signal at initialisation.
        init = torch.empty(out_features, in_features).uniform_(0.02, 2.0) / in_features
        self.weight_raw = nn.Parameter(_inverse_softplus(init))
        self.bias_raw = nn.Parameter(torch.full((out_features,), math.log(math.expm1(0.01)))) if bias else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = z @ F.softplus(self.weight_raw).T
        return out if self.bias_raw is None else out + F.softplus(self.bias_raw)


class SupportNet(MIPSModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != "supportnet":
            raise ValueError(f"SupportNet needs kind='supportnet', got {config.kind!r}")
        self.config = config
        d, w, c = config.dim, config.width, config.heads
        self.activation = SoftLeakyReLU(config.slope, config.sharpness)
        self.input_layer = nn.Linear(d, w, bias=False)
        self.input_bias_raw = nn.Parameter(torch.full((w,), math.log(math.expm1(0.01))))
        self.hidden = nn.ModuleList([NonNegativeLinear(w, w) for _ in range(config.depth - 1)])
        self.reinject = nn.ModuleDict(
            {
                str(layer): nn.Linear(d, w, bias=False)
                for layer in range(1, config.depth)
                if reinjects_input(layer, config.reinject_every)
            }
        )
        self.out = NonNegativeLinear(w, c)
        self.out_linear = nn.Linear(d, c, bias=False)

    def sphere_values(self, u: torch.Tensor) -> torch.Tensor:
        """h_c(u) for unit vectors u, shape (B, heads)."""
        h = self.activation(self.input_layer(u) + F.softplus(self.input_bias_raw))
        for layer, block in enumerate(self.hidden, start=1):
            z = block(h)
            if str(layer) in self.reinject:
                z = z + self.reinject[str(layer)](u)
            h = self.activation(z)
        return self.out(h) + self.out_linear(u)

    def head_scores(self, x: torch.Tensor) -> torch.Tensor:
        """f_c(x) = ‖x‖·h_c(x/‖x‖), shape (B, heads)."""
        norm = x.norm(dim=-1, keepdim=True).clamp_min(_NORM_FLOOR)
        return norm * self.sphere_values(x / norm)

    def score_and_key(self, x: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        self._require_single_head()
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            score = self.head_scores(x_in)[:, 0]
            (key,) = torch.autograd.grad(score.sum(), x_in, create_graph=create_graph)
        return (score, key) if create_graph else (score.detach(), key)

    def flops_per_query(self) -> int:
        # Forward plus the input-gradient backward pass: about two forwards' worth of matrix work.
        weights = self.input_layer.weight.numel() + self.out_linear.weight.numel()
        blocks = cast("list[NonNegativeLinear]", [*self.hidden, self.out])  # ModuleList items are typed Module
        weights += sum(block.weight_raw.numel() for block in blocks)
        weights += sum(cast(nn.Linear, m).weight.numel() for m in self.reinject.values())
        return 4 * weights
