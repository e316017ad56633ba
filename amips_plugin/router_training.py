"""Fitting a router on a collection's query sample (docs/design.md §2): tune-time code, kept off the query path.

The router's points (or a model router's heads) are trained with cross-entropy on the list holding each
query's exact argmax key, L = CE(a·σ̂(x), f*(x)) + λ·‖M − M₀‖² (routing.py gives the scores).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .data import augment, is_unit_norm
from .routing import DEFAULT_ANCHOR, CorrectedModelRouter, PointRouter
from .targets import exact_top1


@dataclass(frozen=True)
class RouterTraining:
    """Settings for fitting a router on a collection's query sample."""

    steps: int = 3000
    batch_size: int = 256
    learning_rate: float = 1e-3
    noise_copies: int = 4
    noise_std: float = 0.02
    anchor: float = DEFAULT_ANCHOR
    seed: int = 0


def fit_router(router: PointRouter | CorrectedModelRouter, keys: np.ndarray, queries: np.ndarray,
               list_of_key: np.ndarray, settings: RouterTraining = RouterTraining(), progress: bool = False) -> None:
    """Train `router` in place: cross-entropy on the list holding each query's exact argmax key
    (`list_of_key` maps key index → list id: fine lists for a PointRouter, coarse for a model)."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    sample = augment(queries, settings.noise_copies, settings.noise_std, is_unit_norm(keys), rng)
    targets = torch.from_numpy(list_of_key[exact_top1(keys, sample).index])
    x = torch.from_numpy(sample)
    optimiser = torch.optim.Adam(router.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    router.train()
    for _ in tqdm(range(settings.steps), desc="router training", unit="step", disable=not progress):
        batch = torch.randint(0, len(x), (settings.batch_size,), generator=generator)
        loss = router.training_loss(x[batch], targets[batch], settings.anchor)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    router.eval()
