"""SmoothMax: a support-function network whose output is a smooth maximum over learned points.

This model is amips' own; the support function and the homogenization wrapper are the paper's
(Olausson et al., arXiv:2603.08001; docs/design.md §1). The support function of the keys, the value
of the MIPS problem (eq. (1.1)), is a maximum of linear functions, σ(x) = max_i <x, y_i>. This
model keeps that form with n learned points m_j (one per key by default) stored in low rank,
m_j = μ + C_j V (C: n×r, V: r×d, so n·r + r·d + d parameters), and replaces the max by a
temperature-τ log-sum-exp, made positively 1-homogeneous by the wrapper f(x) = ‖x‖·h(x/‖x‖):

    h(u) = b⁺ · τ · log Σ_j exp(<u, m_j> / τ)  +  a⁺,          f(x) = ‖x‖ · h(x/‖x‖)

f is convex: the perspective t·τ·LSE(z/(tτ)) is jointly convex and non-decreasing in t because
LSE's tangent intercept LSE(v) − <v, softmax(v)> is the softmax entropy H ≥ 0; a⁺, b⁺ ≥ 0
(softplus) and τ > 0 (exp) keep every term convex. Its gradient, the predicted key, is the
softmax read-out of the points plus a radial term:

    ŷ(x) = ∇f(x) = b⁺ · Σ_j p_j m_j  +  (a⁺ + b⁺·τ·H(p)) · x/‖x‖,       p = softmax(<u, m_j>/τ)

so a query whose points compete (high entropy) leans towards its own direction by construction.

Confidence gate: p_max = max_j p_j measures how sure the read-out is. Below a threshold
(calibrated on validation queries after training, stored with the weights) the model answers
with the radial key ŷ = f(x)·x/‖x‖², which keeps the learned score (<ŷ, x> = f(x), Euler) and
ranks keys exactly as the query itself does: an unsure prediction never points at a wrong key.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import MIPSModel, ModelConfig

_NORM_FLOOR = 1e-12
INITIAL_TEMPERATURE = 0.02
_PCA_CHUNK_ROWS = 1 << 14


def _softplus_inverse(y: float) -> float:
    return math.log(math.expm1(y))


def _principal_axes(rows: torch.Tensor, centre: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` leading principal axes of `rows` about `centre`, as rows (count, d), largest first."""
    scatter = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64)
    for start in range(0, len(rows), _PCA_CHUNK_ROWS):
        centred = (rows[start : start + _PCA_CHUNK_ROWS] - centre).double()
        scatter += centred.T @ centred
    _, vectors = torch.linalg.eigh(scatter)  # ascending eigenvalues
    return vectors.flip(-1).T[:count].float()


class SmoothMaxSupportNet(MIPSModel):
    """kind "smoothmax": `width` is the rank r, `points` the number n of learned points."""

    gate_threshold: torch.Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.kind != "smoothmax":
            raise ValueError(f"SmoothMaxSupportNet needs kind='smoothmax', got {config.kind!r}")
        if config.heads != 1:
            raise ValueError("smoothmax models have a single head")
        if config.points < 1:
            raise ValueError("smoothmax models need points ≥ 1 (the number of learned support points)")
        self.config = config
        n, r, d = config.points, config.width, config.dim
        self.coefficients = nn.Parameter(torch.randn(n, r) / math.sqrt(r))
        self.basis = nn.Parameter(torch.randn(r, d) / math.sqrt(d))
        self.centre = nn.Parameter(torch.zeros(d))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(INITIAL_TEMPERATURE)))
        self.radial_raw = nn.Parameter(torch.tensor(_softplus_inverse(0.25)))
        self.scale_raw = nn.Parameter(torch.tensor(_softplus_inverse(0.75)))
        self.register_buffer("gate_threshold", torch.tensor(0.0))

    def initialise_from_keys(self, keys: np.ndarray) -> None:
        """Start from the keys' rank-r PCA: point j = key j projected (a subset when n < N).

        The principal axes come from the d×d scatter matrix, accumulated in float64 over row chunks,
        and the projections are made chunk by chunk too: beyond the keys, memory is O(d² + chunk·d)
        (an SVD of the centred N×d keys would hold about three more copies of them)."""
        n, r = self.config.points, self.config.width
        keys_t = torch.from_numpy(np.ascontiguousarray(keys, dtype=np.float32))
        if n < len(keys_t):
            keys_t = keys_t[torch.randperm(len(keys_t))[:n]]
        centre = keys_t.mean(dim=0)
        basis = torch.zeros(r, keys_t.shape[1])
        axes = _principal_axes(keys_t, centre, min(r, *keys_t.shape))
        basis[: len(axes)] = axes
        coefficients = torch.zeros(n, r)
        for start in range(0, len(keys_t), _PCA_CHUNK_ROWS):
            coefficients[start : start + _PCA_CHUNK_ROWS] = (keys_t[start : start + _PCA_CHUNK_ROWS] - centre) @ basis.T
        with torch.no_grad():
            self.basis.copy_(basis)
            self.coefficients.copy_(coefficients)
            self.centre.copy_(centre)

    def _logits(self, u: torch.Tensor) -> torch.Tensor:
        """<u, m_j> / τ for every point, shape (B, n)."""
        return ((u @ self.basis.T) @ self.coefficients.T + (u @ self.centre)[:, None]) / self.log_temperature.exp()

    def _score_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        norm = x.norm(dim=-1, keepdim=True).clamp_min(_NORM_FLOOR)
        logits = self._logits(x / norm)
        smooth_max = self.log_temperature.exp() * torch.logsumexp(logits, dim=-1, keepdim=True)
        return norm * (F.softplus(self.scale_raw) * smooth_max + F.softplus(self.radial_raw)), logits

    def head_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self._score_and_logits(x)[0]

    def _score_key_confidence(self, x: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, ...]:
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            score, logits = self._score_and_logits(x_in)
            (key,) = torch.autograd.grad(score.sum(), x_in, create_graph=create_graph)
        confidence = torch.softmax(logits.detach(), dim=-1).max(dim=-1).values
        return (score[:, 0], key, confidence) if create_graph else (score[:, 0].detach(), key, confidence)

    def score_and_key(self, x: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        score, key, _ = self._score_key_confidence(x, create_graph)
        return score, key

    def gate_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(∇f(x), radial key f(x)·x/‖x‖², confidence p_max), for inference and gate calibration."""
        score, key, confidence = self._score_key_confidence(x, create_graph=False)
        radial = score[:, None] * x / x.pow(2).sum(dim=-1, keepdim=True).clamp_min(_NORM_FLOOR)
        return key.detach(), radial.detach(), confidence

    def predict_with_confidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∇f(x), p_max ≥ threshold): the ungated key and whether the gate trusts it."""
        key, _, confidence = self.gate_inputs(x)
        return key, confidence >= self.gate_threshold

    def predict_keys(self, x: torch.Tensor) -> torch.Tensor:
        """∇f(x) where the read-out is confident, else the radial key (ranks like x itself)."""
        key, radial, confidence = self.gate_inputs(x)
        return torch.where((confidence >= self.gate_threshold)[:, None], key, radial)

    def flops_per_query(self) -> int:
        # Forward (u·Vᵀ, ·Cᵀ, u·μ) plus the input-gradient backward pass of the same size.
        n, r, d = self.config.points, self.config.width, self.config.dim
        return 4 * (r * d + n * r + d)
