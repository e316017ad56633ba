"""Batched prediction with a trained model, row chunking, and device selection.

A SmoothMax pass over B queries holds several B×n tensors (n: its points), so every pass over queries —
training's steps (training.py) and serving's rewrites and σ̂ (`forward_in_chunks`) — is cut into row
chunks of at most SCORE_BUDGET scores: what a pass holds is bounded whatever the batch size.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .models import MIPSModel

DEFAULT_BATCH = 4096
SCORE_BUDGET = 1 << 24  # scores (float32: 64 MiB) per row chunk of a B×n tensor
SERVING_ROWS = 128  # queries per forward pass while serving, at most: a larger (rows × points) logit matrix leaves
# the cache (measured on squad-sentences' 6,325-point model: 33 µs a query in chunks of 128 against 86–144 µs
# in one pass of 8,000)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' takes a GPU when one is present, else the CPU; 'cuda' without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; expected auto, cpu or cuda")
    return torch.device(name)


def rows_per_chunk(model: MIPSModel, rows: int, budget: int = SCORE_BUDGET) -> int:
    """How many query rows fit in one pass: at most `budget` scores against the model's n points (its
    hidden width for the other models), and never more than `rows`."""
    columns = max(1, model.config.points, model.config.width)
    return max(1, min(rows, budget // columns))


def forward_in_chunks(model: MIPSModel, queries: np.ndarray,
                      forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]) -> list[np.ndarray]:
    """`forward` over row chunks of `queries` (at most SERVING_ROWS rows and SCORE_BUDGET scores each, no
    gradient kept), each of its outputs concatenated over the chunks. An empty batch is one empty pass."""
    x = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    step = rows_per_chunk(model, SERVING_ROWS)
    with torch.no_grad():
        parts = [forward(x[start:start + step]) for start in range(0, max(len(x), 1), step)]
    return [torch.cat(outputs).numpy() for outputs in zip(*parts)]


def predict_keys(model: MIPSModel, queries: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """ŷ(x) for every row of `queries`, as float32 (M, d)."""
    device = next(model.parameters()).device
    model.eval()
    out = np.empty_like(queries, dtype=np.float32)
    for start in range(0, len(queries), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(queries[start : start + batch_size], dtype=np.float32))
        out[start : start + batch_size] = model.predict_keys(chunk.to(device)).cpu().numpy()
    return out
