"""bench.faiss_policy_bench: plain search's cost and recall at equal recall / equal cost, read off its frontier."""
import pytest

from bench.faiss_policy_bench import frontier, plain_ipe_at, plain_recall_at

PLAIN = {8: {"recall": 0.90, "ipe": 100.0}, 16: {"recall": 0.95, "ipe": 200.0},
         24: {"recall": 0.94, "ipe": 300.0},  # dominated: less recall than knob 16 for more cost
         32: {"recall": 0.99, "ipe": 600.0}}


def test_the_frontier_drops_dominated_points():
    assert frontier(PLAIN) == [(0.90, 100.0), (0.95, 200.0), (0.99, 600.0)]


def test_plain_cost_is_linear_in_recall_between_frontier_neighbours():
    assert plain_ipe_at(PLAIN, 0.97) == pytest.approx(400.0)
    assert plain_ipe_at(PLAIN, 0.95) == pytest.approx(200.0)
    assert plain_ipe_at(PLAIN, 0.995) is None and plain_ipe_at(PLAIN, 0.85) is None  # outside the grid


def test_plain_recall_is_linear_in_cost_between_frontier_neighbours():
    assert plain_recall_at(PLAIN, 150.0) == pytest.approx(0.925)
    assert plain_recall_at(PLAIN, 400.0) == pytest.approx(0.97)  # not the dominated knob 24's 0.94
    assert plain_recall_at(PLAIN, 700.0) is None and plain_recall_at(PLAIN, 50.0) is None
