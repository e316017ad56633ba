"""The one publish workflow (collection_ops.build_and_publish) behind `train`, `pq-build` and `route-build`:
points added while a build runs make what it publishes stale, for each of the three."""
import numpy as np
import pytest

from amips_plugin.adapters import open_store
from amips_plugin import collection_ops
from amips_plugin import pq_build, route_build, training
from amips_plugin.router_training import RouterTraining
from amips_plugin.train_config import TrainConfig

pytestmark = pytest.mark.slow  # trains models and drives real stores; `pytest -m 'not slow'` skips it


def _train(store, queries):
    return collection_ops.train(store, "c", queries, TrainConfig(steps=20, noise_copies=0, device="cpu"),
                                progress=False).manifest


def _pq(store, queries):
    return pq_build.build(store, "c", subspaces=4)


def _route(store, queries):
    return route_build.build(store, "c", queries, lists=4, training=RouterTraining(steps=10))


# each builder's expensive step, which an append will overlap
BUILDERS = {"train": (_train, training, "fit"), "pq": (_pq, pq_build, "anisotropic_pq"),
            "route": (_route, route_build, "fit_router")}


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
