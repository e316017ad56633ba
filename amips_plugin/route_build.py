"""Build the routed list index (`amips route-build`): tune-time code, kept off the query path.

The collection's keys are split into a two-level partition (`routing.TwoLevelPartition`), a
`routing.PointRouter` is trained on a query sample (`router_training.fit_router`) and the result is
published alongside the collection (`collection_ops.build_and_publish`); router_store.py reads it back.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from amips_plugin.adapters.base import VectorStore

from .collection_ops import Built, build_and_publish
from .core.errors import InputError
from .router_store import SLOT, RoutedLists, encode_routed_lists
from .router_training import RouterTraining, fit_router
from .routing import PointRouter, TwoLevelPartition

DEFAULT_SUBLISTS = 8
DEFAULT_COARSE_CANDIDATES = 16


def max_sublists(keys: int, lists: int) -> int:
    """The most fine lists per coarse list: the keys a coarse list holds on average (DEFAULT_SUBLISTS at least),
    so the fine lists' points and biases grow with the key count, never past it by more than a constant."""
    return max(DEFAULT_SUBLISTS, math.ceil(keys / lists))


def build(store: VectorStore, collection: str, queries: np.ndarray, lists: int | None = None,
          sublists: int = DEFAULT_SUBLISTS, coarse_candidates: int = DEFAULT_COARSE_CANDIDATES,
          training: RouterTraining = RouterTraining(), progress: bool = False) -> dict[str, Any]:
    """Partition the collection's keys (c = `lists`, default √N), train the router on `queries`
    (a sample of the collection's query distribution), and publish it alongside; returns the manifest."""

    def route(keys: np.ndarray, ids: np.ndarray, fingerprint: dict[str, Any]) -> Built:
        if queries.ndim != 2 or queries.shape[1] != keys.shape[1]:
            raise InputError(f"queries have dimension {queries.shape[-1]}, the collection has {keys.shape[1]}")
        count = lists or max(1, round(math.sqrt(len(keys))))
        if not 1 <= count <= len(keys):
            raise InputError(f"--lists must lie in [1, {len(keys)}] for {len(keys)} keys, got {count}")
        most = max_sublists(len(keys), count)
        if not 1 <= sublists <= most:
            raise InputError(f"--sublists must lie in [1, {most:,}] for {len(keys):,} keys in {count:,} coarse lists "
                             f"(more fine lists than a coarse list holds keys stay empty), got {sublists:,}")
        partition = TwoLevelPartition.build(keys, count, sublists)
        router = PointRouter(partition)
        fit_router(router, keys, queries, partition.assignment, training, progress)
        routed = RoutedLists.from_assignment(router.freeze(), ids, partition.assignment, coarse_candidates)
        fields = {"lists": count, "sublists": sublists, "coarse_candidates": coarse_candidates,
                  "router_steps": training.steps}
        return Built(encode_routed_lists(routed, {**fields, "fingerprint": fingerprint}), fields)

    return build_and_publish(store, collection, SLOT, route)[0]
