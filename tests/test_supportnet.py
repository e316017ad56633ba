"""SupportNet: positive homogeneity, Euler's identity, guaranteed convexity, gradient = key."""
import numpy as np
import pytest
import torch

from amips_plugin.metrics import relative_key_error
from amips_plugin.models import ModelConfig, SupportNet
from amips_plugin.training import TrainConfig, fit


def _net(depth: int = 3, width: int = 24, dim: int = 8, reinject_every: int = 2) -> SupportNet:
    return SupportNet(ModelConfig(kind="supportnet", dim=dim, width=width, depth=depth,
                                  reinject_every=reinject_every)).double()


def _scramble(net: SupportNet, scale: float = 3.0) -> SupportNet:
    """Random raw parameters of both signs and large size: the guarantee must not depend on init."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn_like(p))
    return net


def _f(net: SupportNet, x: torch.Tensor) -> torch.Tensor:
    return net.head_scores(x)[:, 0]


@pytest.mark.parametrize("t", [0.01, 0.5, 3.0, 250.0])
def test_positive_homogeneity(t):
    net = _scramble(_net())
    x = torch.randn(64, 8, dtype=torch.float64)
    torch.testing.assert_close(_f(net, t * x), t * _f(net, x), rtol=1e-9, atol=1e-9)


def test_euler_identity():
    net = _scramble(_net())
    x = torch.randn(64, 8, dtype=torch.float64)
    score, key = net.score_and_key(x)
    torch.testing.assert_close((key * x).sum(dim=1), score, rtol=1e-8, atol=1e-8)


def test_gradient_is_homogeneous_of_degree_zero():
    net = _scramble(_net())
    x = torch.randn(16, 8, dtype=torch.float64)
    torch.testing.assert_close(net.predict_keys(5.0 * x), net.predict_keys(x), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("seed", range(5))
def test_midpoint_convexity_for_any_parameters(seed):
    torch.manual_seed(seed)
    net = _scramble(_net(depth=4, reinject_every=2))
    a, b = torch.randn(4000, 8, dtype=torch.float64), torch.randn(4000, 8, dtype=torch.float64)
    gap = 0.5 * (_f(net, a) + _f(net, b)) - _f(net, 0.5 * (a + b))
    assert gap.min().item() >= -1e-9 * (1 + _f(net, a).abs().max().item())


def test_unconstrained_bias_would_break_convexity():
    """The midpoint check is sharp: f(x) = <v, x> − ‖x‖ (a negative bias) is caught."""
    a, b = torch.randn(1000, 8, dtype=torch.float64), torch.randn(1000, 8, dtype=torch.float64)

    def concave(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] - x.norm(dim=1)

    assert (0.5 * (concave(a) + concave(b)) - concave(0.5 * (a + b))).min() < -1e-3


def test_toy_support_function_gradient_is_the_key():
    """Keys ±e_i (the cross-polytope): σ(x) = max_i |x_i| and y*(x) = sign(x_j)·e_j, j = argmax |x_i|."""
    dim = 4
    keys = np.concatenate([np.eye(dim), -np.eye(dim)]).astype(np.float32)
    queries = np.random.default_rng(0).normal(size=(3000, dim)).astype(np.float32)
    config = TrainConfig(model="supportnet", width=32, depth=2, steps=1500, batch_size=128, learning_rate=5e-3,
                         noise_copies=0, eval_every=500, patience=10, device="cpu")
    model = fit(keys, queries, config, progress=False).model
    test = torch.from_numpy(np.random.default_rng(1).normal(size=(500, dim)).astype(np.float32))
    score, key = model.score_and_key(test)
    expected_score = test.abs().max(dim=1).values
    j = test.abs().argmax(dim=1)
    expected_key = torch.zeros_like(test)
    expected_key[torch.arange(len(test)), j] = torch.sign(test[torch.arange(len(test)), j])
    keys_t = torch.from_numpy(keys)
    matched = ((key @ keys_t.T).argmax(dim=1) == (test @ keys_t.T).argmax(dim=1)).float().mean().item()
    assert torch.mean(torch.abs(score - expected_score) / expected_score).item() < 0.15
    assert matched > 0.9
    e_rel = relative_key_error(test.numpy(), key.numpy(), expected_key.numpy())
    assert e_rel < 0.55  # the query itself scores 1.0
    # convexity still holds after training
    a, b = torch.randn(2000, dim), torch.randn(2000, dim)
    f = lambda x: model.head_scores(x)[:, 0]  # noqa: E731
    assert (0.5 * (f(a) + f(b)) - f(0.5 * (a + b))).min().item() >= -1e-5
