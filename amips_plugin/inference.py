"""Batched prediction with a trained model, and device selection."""
from __future__ import annotations

import numpy as np
import torch

from .models import MIPSModel

DEFAULT_BATCH = 4096


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' takes a GPU when one is present, else the CPU; 'cuda' without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; expected auto, cpu or cuda")
    return torch.device(name)


def predict_keys(model: MIPSModel, queries: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """ŷ(x) for every row of `queries`, as float32 (M, d)."""
    device = next(model.parameters()).device
    model.eval()
    out = np.empty_like(queries, dtype=np.float32)
    for start in range(0, len(queries), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(queries[start : start + batch_size], dtype=np.float32))
        out[start : start + batch_size] = model.predict_keys(chunk.to(device)).cpu().numpy()
    return out
