"""A Qdrant user's first hour (issue 24): through the application's own QdrantClient, a query costs the
round trips plain search costs, and no more."""
from collections import Counter

import numpy as np
from qdrant_client import QdrantClient, models

from amips_plugin.adapters import qdrant_client_store
from amips_plugin.client import AmipsClient


class _Counting:
    """The wrapped client, counting the calls made through it."""

    def __init__(self, client, calls: Counter) -> None:
        self._client, self._calls = client, calls

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self._calls[name] += 1
            return attr(*args, **kwargs)

        return call


def test_each_query_through_the_users_client_is_one_store_call(tmp_path, monkeypatch):
    """Before: every call also ran an exact `count` (3.6 of 4.1 s over 30 queries) and read the collection
    three times (manifests, stamp); a server pays each as a round trip."""
    monkeypatch.setattr(qdrant_client_store, "SPACES_TTL_SECONDS", 600.0)  # this test's queries fit any window
    rng = np.random.default_rng(0)
    keys, queries = rng.standard_normal((500, 16)).astype(np.float32), rng.standard_normal((30, 16)).astype(np.float32)
    app = QdrantClient(path=str(tmp_path / "local"))
    app.create_collection("docs", vectors_config=models.VectorParams(size=16, distance=models.Distance.DOT))
    app.upsert("docs", points=models.Batch(ids=list(range(500)), vectors=keys.tolist()), wait=True)
    client = AmipsClient(app)
    client.query_points("docs", query=queries[0].tolist(), limit=5, with_payload=False)  # the first reads the config
    calls: Counter = Counter()
    client.store.client._client = _Counting(client.store.client._client, calls)
    for query in queries:
        hits = client.query_points("docs", query=query.tolist(), limit=5, with_payload=False).points
        assert [h.id for h in hits] == (keys @ query).argsort()[::-1][:5].tolist()
    assert client.last_report.mode == "auto" and "no serving policy" in client.last_report.fallback_reason
    assert sum(calls.values()) == len(queries) and set(calls) == {"query_batch_points"}, calls
    app.close()
