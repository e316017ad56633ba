"""Split without leakage, augmentation, and training that actually learns (and is reproducible)."""
import numpy as np
import pytest
import torch

from amips_plugin.data import augment, is_unit_norm, split_by_base_query
from amips_plugin.inference import predict_keys
from amips_plugin.metrics import evaluate_predictions
from amips_plugin.training import TrainConfig, fit, learning_rate_at


def test_split_is_a_partition_of_base_queries():
    train, validation = split_by_base_query(1000, 0.1, seed=4)
    assert len(validation) == 100 and len(train) == 900
    assert set(train).isdisjoint(validation)
    assert set(train) | set(validation) == set(range(1000))


def test_augmented_copies_stay_on_their_side_of_the_split():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(50, 8)).astype(np.float32)
    train, validation = split_by_base_query(len(queries), 0.2, seed=1)
    copies = augment(queries[train], copies=3, noise_std=0.02, normalise=False, rng=rng)
    assert copies.shape == (4 * len(train), 8)
    # every noisy copy is nearest to a training base query, never to a validation one
    nearest = np.argmin(((copies[:, None, :] - queries[None, :, :]) ** 2).sum(-1), axis=1)
    assert set(nearest) <= set(train)


def test_augment_renormalises_unit_norm_collections():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    out = augment(queries, copies=2, noise_std=0.1, normalise=True, rng=rng)
    assert is_unit_norm(out, tolerance=1e-5)
    assert not np.allclose(out[20:40], queries)  # the copies really are perturbed


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [learning_rate_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert learning_rate_at(100, 100, 1.0, 0.1) == pytest.approx(0.0)


@pytest.mark.slow
@pytest.mark.parametrize("kind,min_match", [("keynet", 0.85), ("supportnet", 0.85), ("smoothmax", 0.85)])
def test_training_on_a_small_synthetic_collection_reaches_high_match(small_collection, kind, min_match):
    keys, train, test = small_collection
    config = TrainConfig(model=kind, width=64 if kind != "smoothmax" else 8, depth=2, steps=1500, batch_size=128,
                         learning_rate=3e-3,
                         noise_copies=2, eval_every=250, patience=20, device="cpu")
    result = fit(keys, train, config, progress=False)
    quality = evaluate_predictions(keys, test, predict_keys(result.model, test))
    assert quality.match_rate >= min_match
    assert quality.e_rel < 0.6  # much closer to the true key than the query itself


def test_training_is_deterministic_on_cpu(small_collection):
    keys, train, _ = small_collection
    config = TrainConfig(width=16, depth=2, steps=60, eval_every=30, noise_copies=1, device="cpu", seed=7)
    a, b = fit(keys, train, config, progress=False), fit(keys, train, config, progress=False)
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_time_budget_shortens_the_run(small_collection):
    keys, train, _ = small_collection
    config = TrainConfig(width=16, depth=2, steps=10**7, eval_every=10**6, noise_copies=0, device="cpu",
                         time_budget=1.0)
    result = fit(keys, train, config, progress=False)
    assert result.steps_run < 10**7 and result.budget_steps == result.steps_run
    assert result.seconds < 30


def test_training_is_bounded_to_minutes_by_default():
    """Issue 24.5: at the defaults a 5,183-key collection trained for 630–690 s on a busy machine, unbounded."""
    assert TrainConfig().time_budget is not None and TrainConfig().time_budget <= 300


def test_gate_calibration_reaches_its_validation_target(small_collection):
    keys, train, test = small_collection
    base = dict(model="smoothmax", width=2, steps=300, noise_copies=0, eval_every=100, device="cpu")
    ungated = fit(keys, train, TrainConfig(**base, min_match=0), progress=False)
    strict = fit(keys, train, TrainConfig(**base, min_match=1.0), progress=False)
    assert float(ungated.model.gate_threshold) == 0.0
    assert ungated.validation.match_rate < 1.0  # rank 2 cannot separate 64 keys: the gate has work to do
    assert strict.validation.match_rate == 1.0
    assert float(strict.model.gate_threshold) > 0.0
