"""Training in bounded row chunks computes what training in whole batches computes (bench/train_memory.py
measures the memory this saves)."""
import numpy as np
import pytest
import torch

from amips_plugin import training
from amips_plugin.data import TargetedQueries, augment
from amips_plugin.models import ModelConfig, build_model
from amips_plugin.training import TrainConfig, calibrate_gate, rows_per_chunk


@pytest.fixture
def setup(small_collection):
    keys, train, _ = small_collection
    model = build_model(ModelConfig(kind="smoothmax", dim=16, width=8, points=64))
    model.initialise_from_keys(keys)
    targeted = TargetedQueries.build(keys, train[:300], torch.device("cpu"))
    return model, targeted, torch.from_numpy(keys)


def _gradients(model, targeted, keys_t, micro_batch):
    model.zero_grad(set_to_none=True)
    batch = torch.arange(256)
    loss = training._accumulate_gradients(model, targeted, keys_t, batch, micro_batch, TrainConfig())
    return float(loss.total.detach()), [p.grad.clone() for p in model.parameters()]


def test_chunked_steps_accumulate_the_whole_batch_gradient(setup):
    model, targeted, keys_t = setup
    whole_loss, whole = _gradients(model, targeted, keys_t, 256)
    chunked_loss, chunked = _gradients(model, targeted, keys_t, 37)  # 6 chunks of 37 and one of 34
    assert chunked_loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_rows_per_chunk_bounds_the_scores_held_at_once(setup):
    model = setup[0]  # 64 points
    assert rows_per_chunk(model, 256) == 256
    assert rows_per_chunk(model, 256, budget=64 * 10) == 10
    assert rows_per_chunk(model, 256, budget=1) == 1


def test_gate_calibration_in_chunks_matches_one_pass(setup, monkeypatch):
    model, targeted, keys_t = setup
    whole = calibrate_gate(model, keys_t, targeted, 0.9)
    monkeypatch.setattr(training, "SCORE_BUDGET", 64 * 7)  # 7 rows per chunk
    assert calibrate_gate(model, keys_t, targeted, 0.9).threshold == pytest.approx(whole.threshold)


def test_fit_with_chunked_steps_learns_the_same_model(small_collection, monkeypatch):
    keys, train, _ = small_collection
    config = TrainConfig(steps=60, eval_every=30, noise_copies=1, width=8, device="cpu")
    torch.manual_seed(0)
    whole = training.fit(keys, train, config, progress=False)
    monkeypatch.setattr(training, "SCORE_BUDGET", 64 * 50)  # batches of 256 in chunks of fewer rows
    chunks: list[int] = []
    accumulate = training._accumulate_gradients
    monkeypatch.setattr(training, "_accumulate_gradients",
                        lambda model, train, keys_t, batch, micro_batch, config:
                            chunks.append(micro_batch) or accumulate(model, train, keys_t, batch, micro_batch, config))
    torch.manual_seed(0)
    chunked = training.fit(keys, train, config, progress=False)
    # every step was chunked (the patched budget once never reached the training loop: 256-row steps)
    assert len(set(chunks)) == 1 and chunks[0] < config.batch_size
    assert chunked.steps_run == whole.steps_run
    for a, b in zip(whole.model.state_dict().values(), chunked.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_augment_fills_one_array_with_the_queries_then_their_noisy_copies():
    queries = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    out = augment(queries, copies=3, noise_std=0.05, normalise=False, rng=np.random.default_rng(1))
    assert out.shape == (120, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:30], queries)
    rng = np.random.default_rng(1)  # each copy: the queries plus that copy's noise, drawn whole
    for index in range(1, 4):
        np.testing.assert_array_equal(out[30 * index: 30 * (index + 1)],
                                      queries + rng.normal(0.0, 0.05, size=queries.shape).astype(np.float32))


def test_serving_passes_hold_a_bounded_number_of_scores(monkeypatch):
    """`forward_in_chunks` (rewrites and σ̂ at query time) sees at most SERVING_ROWS rows, and fewer for a model
    with many points (SCORE_BUDGET scores a pass), and returns what one pass over the batch returns."""
    from amips_plugin import inference
    from amips_plugin.serving_policy import support_values

    model = build_model(ModelConfig(kind="smoothmax", dim=4, width=2, points=300_000))  # 55 rows per 2²⁴ scores
    queries = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    seen = []
    original = model.head_scores
    monkeypatch.setattr(model, "head_scores", lambda x: seen.append(len(x)) or original(x))
    sigma = support_values(model, queries)
    assert sum(seen) == 300 and max(seen) == inference.SCORE_BUDGET // 300_000 < inference.SERVING_ROWS
    with torch.no_grad():
        np.testing.assert_allclose(sigma, original(torch.from_numpy(queries))[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    small = build_model(ModelConfig(kind="smoothmax", dim=4, width=2, points=64))
    keys, gated = inference.forward_in_chunks(small, queries, small.predict_with_confidence)
    assert keys.shape == (300, 4) and gated.shape == (300,)
    assert [len(part) for part in inference.forward_in_chunks(small, queries[:0],
                                                              small.predict_with_confidence)] == [0, 0]
