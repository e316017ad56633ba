import numpy as np
import pytest
import torch

from amips_plugin.synthetic import gaussian_mixture


@pytest.fixture(autouse=True)
def _single_thread_seeded():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_collection() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64 keys in 16-d with varying norms; 1,200 training and 300 test queries from the same mixture."""
    keys, queries = gaussian_mixture(num_keys=64, num_queries=1500, dim=16, clusters=8, seed=3)
    return keys, queries[:1200], queries[1200:]
