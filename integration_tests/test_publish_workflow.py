"""The one publish workflow (collections.build_and_publish) behind `train`, `pq-build` and `route-build`:
points added while a build runs make what it publishes stale, for each of the three."""
import numpy as np
import pytest

from amips_plugin.adapters import open_store
from amips_plugin import collections as collection_ops
from amips_plugin import router_store
from amips_plugin.routing import RouterTraining
from amips_plugin.training import TrainConfig
from amips_plugin.compression import pq_store

pytestmark = pytest.mark.slow  # trains models and drives real stores; `pytest -m 'not slow'` skips it


def _train(store, queries):
    return collection_ops.train(store, "c", queries, TrainConfig(steps=20, noise_copies=0, device="cpu"),
                                progress=False).manifest


def _pq(store, queries):
    return pq_store.build(store, "c", subspaces=4)


def _route(store, queries):
    return router_store.build(store, "c", queries, lists=4, training=RouterTraining(steps=10))


# each builder's expensive step, which an append will overlap
BUILDERS = {"train": (_train, collection_ops, "fit"), "pq": (_pq, pq_store, "anisotropic_pq"),
            "route": (_route, router_store, "fit_router")}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("append_meanwhile", [False, True])
def test_a_build_overlapped_by_an_append_is_published_stale(name, append_meanwhile, monkeypatch, mixture):
    keys, train, _ = mixture
    store = open_store(":memory:")
    collection_ops.ingest(store, "c", keys[:300])
    build, module, step = BUILDERS[name]
    original = getattr(module, step)

    def overlapped(*args, **kwargs):
        if append_meanwhile:  # another client writes while the build runs
            store.upsert("c", np.array([5_000]), keys[300:301])
        return original(*args, **kwargs)

    monkeypatch.setattr(module, step, overlapped)
    manifest = build(store, train[:300])
    assert manifest["stale"] is append_meanwhile
    assert manifest["fingerprint"]["count"] == 300
    store.close()
