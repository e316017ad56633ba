"""Learned routing: rank partitions of the keys by a predicted support value (docs/design.md §1, its routing
variant, and §2).

An inverted-file (IVF) search scores c centroids, then scans the keys of the best lists exactly
with the true query x. Its recall@1 is the chance that the list holding y*(x) is scanned, so the
whole question is which lists to open. The support function of list P_j,

    σ_j(x) = max_{y ∈ P_j} <x, y>,

is the ideal ranking; nearest-centroid routing uses the crude lower proxy <x, μ_j>.

**Point router** (the `route` mode). A two-level partition splits each of the c coarse lists into
s fine lists (k-means inside the list). Every fine list f owns one learned point m_f, initialised
at its key centroid, and a bias b_f; its score

    σ̂_f(x) = <x, m_f> + b_f·‖x‖

is linear and positively 1-homogeneous, and the coarse list's score max_f σ̂_f(x) is a support
function (SupportNet's form, with the max taken exactly). The points are trained on the
collection's query sample with cross-entropy on the fine list holding y*(x),

    L = CE(a·σ̂(x), f*(x)) + λ·‖M − M₀‖²,

the second term anchoring the points at the key centroids M₀ so that the router stays near plain
centroid routing where it has seen no queries. At query time only the fine lists of the M coarse
lists nearest by centroid are scored: c + M·s IPE of routing, then the chosen fine lists are
scanned exactly (Σ |f| IPE) and rescored with x. The coarse step is never learned, so a query
from outside the training distribution is routed at least to its nearest coarse lists, and a
confidence gate (`ListRanker`) ranks the fine lists of a query the router is unsure of by their
key centroids, as the untrained router would.

**Model routers** (the routing table). A c-headed KeyNet (σ̂_j = <g_j(x), x>) or SupportNet
(σ̂_j = f_j(x)) adds a learned correction to the centroid scores, logits_j = a·<x, μ_j> + β·σ̂_j(x)
with β starting at 0, trained with the same cross-entropy on the coarse list holding y*(x).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import faiss
import numpy as np
import torch
from torch import nn

from .models import ModelConfig, build_model

INITIAL_LOGIT_SCALE = 20.0
DEFAULT_ANCHOR = 1e-3


@dataclass(frozen=True)
class TwoLevelPartition:
    """c coarse lists, each split into s fine lists; fine list f belongs to coarse list f // s.

    coarse: (c, d) centroids; fine: (c·s, d) centroids (a list with fewer than s keys repeats its
    last centroid for the unused slots, which stay empty); assignment: (N,) fine list per key.
    """

    coarse: np.ndarray
    fine: np.ndarray
    assignment: np.ndarray

    @property
    def lists(self) -> int:
        return len(self.coarse)

    @property
    def sublists(self) -> int:
        return len(self.fine) // len(self.coarse)

    @property
    def fine_sizes(self) -> np.ndarray:
        return np.bincount(self.assignment, minlength=len(self.fine))

    @property
    def coarse_assignment(self) -> np.ndarray:
        return self.assignment // self.sublists

    @classmethod
    def build(cls, keys: np.ndarray, lists: int, sublists: int = 1, seed: int = 0) -> TwoLevelPartition:
        """k-means (FAISS) into `lists` coarse lists, keys assigned by inner product as IVF does,
        then k-means inside every coarse list into `sublists` fine lists."""
        keys = np.ascontiguousarray(keys, dtype=np.float32)
        if not 1 <= lists <= len(keys):
            raise ValueError(f"lists must lie in [1, {len(keys)}], got {lists}")
        dim = keys.shape[1]
        coarse_km = faiss.Kmeans(dim, lists, niter=20, seed=seed, verbose=False)
        coarse_km.train(keys)
        coarse = coarse_km.centroids
        assert coarse is not None  # set by train()
        owner = _nearest(keys, coarse, by="ip")
        fine = np.repeat(coarse, sublists, axis=0)
        assignment = owner * sublists
        for j in range(lists if sublists > 1 else 0):
            members = np.flatnonzero(owner == j)
            if len(members) == 0:
                continue
            count = min(sublists, len(members))
            km = faiss.Kmeans(dim, count, niter=20, seed=seed + j, verbose=False, min_points_per_centroid=1)
            km.train(keys[members])
            assert km.centroids is not None  # set by train()
            fine[j * sublists : j * sublists + count] = km.centroids
            fine[j * sublists + count : (j + 1) * sublists] = km.centroids[-1]
            assignment[members] = j * sublists + _nearest(keys[members], km.centroids, by="l2")
        return cls(coarse=coarse, fine=fine, assignment=assignment.astype(np.int64))


def _nearest(vectors: np.ndarray, centroids: np.ndarray, by: str) -> np.ndarray:
    """Index of the best centroid per vector: largest inner product (by="ip") or nearest (by="l2")."""
    index = faiss.IndexFlatIP(centroids.shape[1]) if by == "ip" else faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)[1][:, 0]


def rank_by_centroids(queries: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest-centroid routing: list ids per query, best <x, μ_j> first."""
    return np.argsort(-(queries @ centroids.T), axis=1)


class PointRouter(nn.Module):
    """One learned point and bias per fine list; see the module docstring for the math."""

    anchor: torch.Tensor  # buffers (register_buffer), declared for the type checker
    coarse: torch.Tensor

    def __init__(self, partition: TwoLevelPartition) -> None:
        super().__init__()
        fine = torch.from_numpy(np.ascontiguousarray(partition.fine, dtype=np.float32))
        self.points = nn.Parameter(fine.clone())
        self.bias = nn.Parameter(torch.zeros(len(fine)))
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(INITIAL_LOGIT_SCALE))))
        self.register_buffer("anchor", fine.clone())
        self.register_buffer("coarse", torch.from_numpy(np.ascontiguousarray(partition.coarse, dtype=np.float32)))
        self.sublists = partition.sublists

    def fine_scores(self, x: torch.Tensor) -> torch.Tensor:
        """σ̂_f(x) = <x, m_f> + b_f·‖x‖ for every fine list, shape (B, c·s)."""
        return x @ self.points.T + self.bias * x.norm(dim=1, keepdim=True)

    def training_loss(self, x: torch.Tensor, fine_target: torch.Tensor, anchor: float) -> torch.Tensor:
        logits = self.log_scale.exp() * self.fine_scores(x)
        drift = ((self.points - self.anchor) ** 2).sum()
        return nn.functional.cross_entropy(logits, fine_target) + anchor * drift

    def freeze(self) -> ListRanker:
        """The trained router as plain arrays for the query path (no autograd, no torch overhead), ungated."""
        return ListRanker(coarse=self.coarse.numpy().copy(), points=self.points.detach().numpy().copy(),
                          bias=self.bias.detach().numpy().copy(), anchor=self.anchor.numpy().copy(),
                          logit_scale=float(self.log_scale.detach().exp()), sublists=self.sublists)

    @torch.no_grad()
    def rank_coarse(self, queries: np.ndarray) -> np.ndarray:
        """Coarse lists by max_f σ̂_f(x) over their fine lists, best first (the routing table's view)."""
        x = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        scores = self.fine_scores(x).view(len(x), len(self.coarse), self.sublists).amax(dim=2)
        return torch.argsort(scores, dim=1, descending=True).numpy()



@dataclass(frozen=True)
class Ranking:
    """Fine list ids per query, best first (B, M·s), and which queries the gate sent to the anchors (B,)."""

    lists: np.ndarray
    gated: np.ndarray


@dataclass(frozen=True)
class ListRanker:
    """A frozen point router: ranks the fine lists of the M nearest coarse lists by σ̂_f(x).

    **Confidence gate.** Over the M·s candidate fine lists, the router's confidence is the softmax
    probability of its first choice at the trained logit scale a,

        p(x) = exp(a·σ̂_top(x)) / Σ_f exp(a·σ̂_f(x)).

    A query with p(x) < min_confidence is ranked by the anchors instead, <x, m⁰_f> with m⁰_f the
    fine list's key centroid (the untrained router), so a query unlike the training sample gets
    centroid routing; that costs M·s more inner products for that query. `calibrate_gate` sets
    min_confidence to a low quantile of p on held-out training queries; 0 switches the gate off.
    """

    coarse: np.ndarray  # (c, d)
    points: np.ndarray  # (c·s, d)
    bias: np.ndarray  # (c·s,)
    anchor: np.ndarray  # (c·s, d): the fine lists' key centroids
    logit_scale: float
    sublists: int
    min_confidence: float = 0.0

    def rank(self, queries: np.ndarray, coarse_candidates: int) -> Ranking:
        """Rank each query's M·s candidate fine lists, by the learned scores or, when gated, the anchors.

        One query scores only its M·s candidate points (what `routing_ipe` counts); a batch scores
        all c·s points in one matrix product and picks the same candidates' scores, which is faster
        in BLAS than gathering M·s points per query and ranks identically."""
        queries = np.asarray(queries, dtype=np.float32)
        fine = self._candidates(queries, coarse_candidates)
        scores = self._learned_scores(queries, fine)
        gated = self._confidence(scores) < self.min_confidence
        if gated.any():
            scores[gated] = np.einsum("bkd,bd->bk", self.anchor[fine[gated]], queries[gated])
        return Ranking(np.take_along_axis(fine, np.argsort(-scores, axis=1), axis=1), gated)

    def confidence(self, queries: np.ndarray, coarse_candidates: int) -> np.ndarray:
        """p(x) per query: the softmax probability of the router's first choice among its candidates."""
        queries = np.asarray(queries, dtype=np.float32)
        return self._confidence(self._learned_scores(queries, self._candidates(queries, coarse_candidates)))

    def calibrate_gate(self, held_out: np.ndarray, coarse_candidates: int, quantile: float) -> ListRanker:
        """This ranker gated at the `quantile` of p(x) over held-out in-distribution queries: about
        that share of such queries falls back to the anchors, and more of the queries it has not learned."""
        threshold = float(np.quantile(self.confidence(held_out, coarse_candidates), quantile)) if quantile > 0 else 0.0
        return replace(self, min_confidence=threshold)

    def routing_ipe(self, coarse_candidates: int, gated_share: float = 0.0) -> float:
        """Inner products spent choosing lists: c coarse centroids + M·s fine points (+ M·s anchors if gated)."""
        fine = min(coarse_candidates, len(self.coarse)) * self.sublists
        return float(len(self.coarse) + fine * (1.0 + gated_share))

    def _candidates(self, queries: np.ndarray, coarse_candidates: int) -> np.ndarray:
        """The fine lists of each query's M nearest coarse lists by <x, μ_j>, shape (B, M·s)."""
        m = min(coarse_candidates, len(self.coarse))
        if m < len(self.coarse):
            top = np.argpartition(-(queries @ self.coarse.T), m - 1, axis=1)[:, :m]
        else:
            top = np.broadcast_to(np.arange(m), (len(queries), m))
        return (top[:, :, None] * self.sublists + np.arange(self.sublists)).reshape(len(queries), -1)

    def _learned_scores(self, queries: np.ndarray, fine: np.ndarray) -> np.ndarray:
        """σ̂_f(x) for each query's candidate fine lists `fine` (B, M·s): one query gathers its M·s
        points; a batch scores all c·s points in one matrix product and picks the candidates'."""
        if len(queries) == 1:
            return (self.points[fine[0]] @ queries[0] + self.bias[fine[0]] * np.linalg.norm(queries[0]))[None, :]
        every = queries @ self.points.T + self.bias * np.linalg.norm(queries, axis=1, keepdims=True)
        return np.take_along_axis(every, fine, axis=1)

    def _confidence(self, scores: np.ndarray) -> np.ndarray:
        logits = self.logit_scale * (scores - scores.max(axis=1, keepdims=True))
        return 1.0 / np.exp(logits).sum(axis=1)


class CorrectedModelRouter(nn.Module):
    """logits_j = a·<x, μ_j> + β·σ̂_j(x) with a c-headed KeyNet or SupportNet (β starts at 0)."""

    centroids: torch.Tensor  # a buffer (register_buffer), declared for the type checker

    def __init__(self, centroids: np.ndarray, kind: str, width: int, depth: int = 2) -> None:
        super().__init__()
        self.register_buffer("centroids", torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)))
        self.model = build_model(ModelConfig(kind=kind, dim=centroids.shape[1], width=width, depth=depth,
                                             heads=len(centroids)))
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(INITIAL_LOGIT_SCALE))))
        self.correction = nn.Parameter(torch.zeros(()))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * (x @ self.centroids.T) + self.correction * self.model.head_scores(x)

    def training_loss(self, x: torch.Tensor, coarse_target: torch.Tensor, anchor: float) -> torch.Tensor:
        return nn.functional.cross_entropy(self.logits(x), coarse_target)

    @torch.no_grad()
    def rank(self, queries: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        return torch.argsort(self.logits(x), dim=1, descending=True).numpy()

    def routing_ipe(self) -> float:
        return len(self.centroids) + self.model.flops_per_query() / (2 * self.centroids.shape[1])
