"""Learned routing: the two-level partition, the point router and the corrected model router."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from amips_plugin.core.errors import ArtifactError
from amips_plugin.router_store import RoutedLists, decode_routed_lists, encode_routed_lists
from amips_plugin.router_training import RouterTraining, fit_router
from amips_plugin.routing import CorrectedModelRouter, PointRouter, TwoLevelPartition, rank_by_centroids
from amips_plugin.synthetic import gaussian_mixture
from amips_plugin.compression.artifact import pack, unpack
from amips_plugin.compression.quantization import encode_exact


@pytest.fixture(scope="module")
def collection() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries from a *shifted* mixture: their nearest key centroid is often not the list holding
    their best key, which is what a learned router can correct."""
    keys, queries = gaussian_mixture(4000, 3000, 32, clusters=20, seed=11, spread=0.6)
    rng = np.random.default_rng(0)
    queries = queries + 0.5 * rng.normal(size=(1, 32)).astype(np.float32) / np.sqrt(32)
    return keys, queries[:2500], queries[2500:]


@pytest.fixture(scope="module")
def partition(collection) -> TwoLevelPartition:
    return TwoLevelPartition.build(collection[0], lists=16, sublists=4, seed=0)


def _hit_at_1(order: np.ndarray, keys: np.ndarray, queries: np.ndarray, list_of_key: np.ndarray) -> float:
    truth = np.argmax(queries @ keys.T, axis=1)
    return float(np.mean(order[:, 0] == list_of_key[truth]))


def test_partition_assigns_every_key_to_a_fine_list_of_its_inner_product_coarse_list(collection, partition):
    keys = collection[0]
    assert partition.lists == 16 and partition.sublists == 4 and partition.fine.shape == (64, 32)
    assert partition.fine_sizes.sum() == len(keys)
    assert np.array_equal(partition.coarse_assignment, np.argmax(keys @ partition.coarse.T, axis=1))


def test_untrained_point_router_with_every_list_ranks_all_fine_lists(collection, partition):
    _, _, test = collection
    ranker = PointRouter(partition).freeze()
    order = ranker.rank(test, coarse_candidates=16).lists
    assert order.shape == (len(test), 64)
    assert all(len(set(row)) == 64 for row in order[:20])
    assert ranker.routing_ipe(16) == 16 + 64 and ranker.routing_ipe(4) == 16 + 16
    restricted = ranker.rank(test, coarse_candidates=2).lists
    coarse_top2 = rank_by_centroids(test, partition.coarse)[:, :2]
    assert np.array_equal(np.sort(np.unique(restricted // 4, axis=None)),
                          np.sort(np.unique(coarse_top2, axis=None)))
    assert all(set(r // 4) == set(c) for r, c in zip(restricted, coarse_top2))


def test_trained_point_router_beats_centroid_routing_on_held_out_queries(collection, partition):
    keys, train, test = collection
    router = PointRouter(partition)
    before = router.rank_coarse(test)
    fit_router(router, keys, train, partition.assignment, RouterTraining(steps=600, noise_copies=1))
    centroid_hit = _hit_at_1(rank_by_centroids(test, partition.coarse), keys, test, partition.coarse_assignment)
    untrained_hit = _hit_at_1(before, keys, test, partition.coarse_assignment)
    trained_hit = _hit_at_1(router.rank_coarse(test), keys, test, partition.coarse_assignment)
    assert trained_hit > max(centroid_hit, untrained_hit) + 0.03


def test_anchor_holds_points_at_their_key_centroids(collection, partition):
    keys, train, _ = collection
    free, held = PointRouter(partition), PointRouter(partition)
    fit_router(free, keys, train, partition.assignment, RouterTraining(steps=200, noise_copies=0, anchor=0.0))
    fit_router(held, keys, train, partition.assignment, RouterTraining(steps=200, noise_copies=0, anchor=100.0))

    def drift(router):
        return float(((router.points.detach() - router.anchor) ** 2).sum())

    assert drift(held) < 0.05 * drift(free)


def test_corrected_model_router_starts_as_centroid_routing_and_learns(collection, partition):
    keys, train, test = collection
    router = CorrectedModelRouter(partition.coarse, "supportnet", width=16)
    assert np.array_equal(router.rank(test), rank_by_centroids(test, partition.coarse))
    fit_router(router, keys, train, partition.coarse_assignment, RouterTraining(steps=400, noise_copies=1))
    assert float(router.correction.detach().abs()) > 0
    centroid_hit = _hit_at_1(rank_by_centroids(test, partition.coarse), keys, test, partition.coarse_assignment)
    assert _hit_at_1(router.rank(test), keys, test, partition.coarse_assignment) > centroid_hit
    assert router.routing_ipe() > len(partition.coarse)


def test_fit_router_is_deterministic(collection, partition):
    keys, train, _ = collection
    a, b = PointRouter(partition), PointRouter(partition)
    for router in (a, b):
        fit_router(router, keys, train, partition.assignment, RouterTraining(steps=50, noise_copies=0))
    assert torch.equal(a.points, b.points)


def test_batch_and_single_query_ranking_agree(collection, partition):
    """The batched path (one matrix product) and the one-query path (M·s gathered points) rank alike."""
    _, train, test = collection
    router = PointRouter(partition)
    with torch.no_grad():
        router.bias.normal_(0.0, 0.1)
        router.points.add_(0.05 * torch.randn_like(router.points))
    ranker = router.freeze()
    gated = ranker.calibrate_gate(train, coarse_candidates=5, quantile=0.3)
    for r in (ranker, gated):
        batch = r.rank(test[:40], coarse_candidates=5)
        single = [r.rank(test[i : i + 1], coarse_candidates=5) for i in range(40)]
        assert np.array_equal(batch.lists, np.concatenate([s.lists for s in single]))
        assert np.array_equal(batch.gated, np.concatenate([s.gated for s in single]))
    assert 0 < gated.rank(test[:40], coarse_candidates=5).gated.sum() < 40


@pytest.fixture(scope="module")
def trained_ranker(collection, partition):
    keys, train, _ = collection
    router = PointRouter(partition)
    fit_router(router, keys, train[:2000], partition.assignment, RouterTraining(steps=600, noise_copies=1))
    return router.freeze()


def test_gated_queries_are_ranked_by_the_key_centroids(collection, partition, trained_ranker):
    _, _, test = collection
    untrained = PointRouter(partition).freeze().rank(test, coarse_candidates=4).lists
    learned = trained_ranker.rank(test, coarse_candidates=4)
    assert not learned.gated.any() and not np.array_equal(learned.lists, untrained)
    everyone = replace(trained_ranker, min_confidence=1.01).rank(test, coarse_candidates=4)
    assert everyone.gated.all() and np.array_equal(everyone.lists, untrained)
    assert trained_ranker.routing_ipe(4, gated_share=0.5) == 16 + 16 * 1.5


def test_gate_calibrated_on_held_out_queries_sends_more_unseen_queries_to_the_centroids(collection, trained_ranker):
    """About `quantile` of in-distribution queries fall back; queries from elsewhere fall back more often."""
    _, train, test = collection
    gated = trained_ranker.calibrate_gate(train[2000:], coarse_candidates=4, quantile=0.2)
    assert 0.1 < gated.rank(test, coarse_candidates=4).gated.mean() < 0.3
    elsewhere = np.random.default_rng(5).normal(size=test.shape).astype(np.float32) * np.linalg.norm(
        test, axis=1, keepdims=True) / np.sqrt(test.shape[1])
    assert gated.rank(elsewhere, coarse_candidates=4).gated.mean() > 0.5
    assert trained_ranker.calibrate_gate(train[2000:], coarse_candidates=4, quantile=0.0).min_confidence == 0.0


def test_routed_lists_round_trip_and_refuse_a_mismatched_artifact(collection, partition, trained_ranker):
    """The stored router ranks and gathers exactly as the trained one; parts that do not fit are refused."""
    _, _, test = collection
    ids = np.arange(len(partition.assignment), dtype=np.int64) + 1000
    routed = RoutedLists.from_assignment(trained_ranker, ids, partition.assignment, coarse_candidates=4)
    restored = decode_routed_lists(encode_routed_lists(routed, {"lists": 16}))
    for a, b in zip(routed.candidates(test[:30], 3), restored.candidates(test[:30], 3)):
        assert np.array_equal(a, b)
    first = routed.candidates(test[:1], 1)[0]
    best = trained_ranker.rank(test[:1], 4).lists[0, 0]
    assert np.array_equal(np.sort(first), np.flatnonzero(partition.assignment == best) + 1000)
    header, tensors = unpack(encode_routed_lists(routed, {}), "amips-router")
    tensors["bias"] = tensors["bias"][:-1]
    broken = pack("amips-router", {k: v for k, v in header.items() if k not in ("format", "tensors")},
                  [(name, encode_exact(array)) for name, array in tensors.items()])
    with pytest.raises(ArtifactError, match="do not fit together"):
        decode_routed_lists(broken)
    with pytest.raises(ArtifactError):
        decode_routed_lists(encode_routed_lists(routed, {})[:-5])
