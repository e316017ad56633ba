"""Loss weights and scaling, metric definitions, exact chunked targets."""
import numpy as np
import pytest
import torch

from amips_plugin.losses import amortized_mips_loss
from amips_plugin.metrics import evaluate_predictions, ranks_of_true_keys, relative_key_error
from amips_plugin.targets import exact_top1


def test_loss_weights_and_per_coordinate_key_scaling():
    d = 4
    pred_keys, true_keys = torch.zeros(2, d), torch.ones(2, d)  # squared error 1 in every coordinate
    pred_scores, true_scores = torch.tensor([0.0, 0.0]), torch.tensor([3.0, 1.0])  # mean squared error 5
    parts = amortized_mips_loss(pred_scores, pred_keys, true_scores, true_keys)
    assert parts.key.item() == pytest.approx(1.0)  # mean over batch AND coordinates: the /d scaling
    assert parts.score.item() == pytest.approx(5.0)
    assert parts.total.item() == pytest.approx(0.01 * 5.0 + 1.0 * 1.0)


def test_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        amortized_mips_loss(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 4))


def test_metrics_on_a_hand_made_case():
    keys = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    queries = np.array([[1, 0.1], [0.2, 1], [1, 0.5]], dtype=np.float32)  # true argmax 0, 1, 0
    predicted = np.array([[1, 0], [1, 0], [0.5, 1]], dtype=np.float32)  # ranks 0, 1, 1
    assert list(ranks_of_true_keys(keys, predicted, np.array([0, 1, 0]))) == [0, 1, 1]
    q = evaluate_predictions(keys, queries, predicted)
    assert q.match_rate == pytest.approx(1 / 3)
    assert q.mrr == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert q.recall[1] == pytest.approx(1 / 3) and q.recall[5] == 1.0
    e = [np.linalg.norm(predicted[i] - keys[t]) / np.linalg.norm(queries[i] - keys[t]) for i, t in enumerate([0, 1, 0])]
    assert q.e_rel == pytest.approx(np.mean(e), rel=1e-6)


def test_e_rel_of_the_query_itself_is_one_and_ties_do_not_count_as_misses():
    keys = np.array([[1, 0], [1, 0]], dtype=np.float32)
    queries = np.array([[2, 1]], dtype=np.float32)
    assert relative_key_error(queries, queries, keys[[0]]) == pytest.approx(1.0)
    assert ranks_of_true_keys(keys, queries, np.array([1]))[0] == 0  # equal scores: not strictly higher


def test_exact_top1_matches_brute_force_in_tiny_chunks():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(300, 12)).astype(np.float32) * rng.uniform(0.5, 2, size=(300, 1)).astype(np.float32)
    queries = rng.normal(size=(257, 12)).astype(np.float32)
    scores = queries @ keys.T
    targets = exact_top1(keys, queries, max_scores=1000)  # 3 queries per chunk
    np.testing.assert_array_equal(targets.index, scores.argmax(axis=1))
    np.testing.assert_allclose(targets.score, scores.max(axis=1), rtol=1e-5)


def test_exact_top1_refuses_empty_keys_and_dimension_mismatch():
    with pytest.raises(ValueError, match="no keys"):
        exact_top1(np.zeros((0, 3), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="equal width"):
        exact_top1(np.zeros((4, 3), np.float32), np.zeros((2, 5), np.float32))
