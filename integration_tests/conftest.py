"""Real backends: qdrant-client local mode (on disk; in memory in test_python_api) and Qdrant Edge always; a Qdrant
server too when QDRANT_URL is set (e.g. `docker compose up -d` then QDRANT_URL=http://localhost:6333)."""
import os
import uuid

import pytest
import torch

from amips_plugin.synthetic import gaussian_mixture

BACKENDS = ["local-dir", "edge"] + (["server"] if os.environ.get("QDRANT_URL") else [])


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(params=BACKENDS)
def store_spec(request, tmp_path):
    if request.param == "local-dir":
        return str(tmp_path / "local")
    if request.param == "edge":
        return f"edge:{tmp_path / 'edge'}"
    return os.environ["QDRANT_URL"]


@pytest.fixture
def collection_name():
    return f"it_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def mixture():
    """600 keys in 32-d with varying norms (MIPS ≠ cosine); 2,400 training and 400 test queries."""
    keys, queries = gaussian_mixture(num_keys=600, num_queries=2800, dim=32, clusters=12, seed=11)
    return keys, queries[:2400], queries[2400:]


@pytest.fixture(scope="session")
def mixture_truth(mixture):
    keys, _, test = mixture
    return (test @ keys.T).argmax(axis=1)
