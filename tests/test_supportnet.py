"""SupportNets (ICNN and smooth max): positive homogeneity, Euler, guaranteed convexity, gradient = key."""
import numpy as np
import pytest
import torch

from amips_plugin.metrics import relative_key_error
from amips_plugin.models import MIPSModel, ModelConfig, SmoothMaxSupportNet, SupportNet
from amips_plugin.training import TrainConfig, fit


def _net(depth: int = 3, width: int = 24, dim: int = 8, reinject_every: int = 2, kind: str = "supportnet") -> MIPSModel:
    if kind == "smoothmax":
        return SmoothMaxSupportNet(ModelConfig(kind="smoothmax", dim=dim, width=5, points=40)).double()
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


KINDS = ["supportnet", "smoothmax"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [0.01, 0.5, 3.0, 250.0])
def test_positive_homogeneity(t, kind):
    net = _scramble(_net(kind=kind))
    x = torch.randn(64, 8, dtype=torch.float64)
    torch.testing.assert_close(_f(net, t * x), t * _f(net, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_euler_identity(kind):
    net = _scramble(_net(kind=kind))
    x = torch.randn(64, 8, dtype=torch.float64)
    score, key = net.score_and_key(x)
    torch.testing.assert_close((key * x).sum(dim=1), score, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_is_homogeneous_of_degree_zero(kind):
    net = _scramble(_net(kind=kind))
    x = torch.randn(16, 8, dtype=torch.float64)
    torch.testing.assert_close(net.predict_keys(5.0 * x), net.predict_keys(x), rtol=1e-8, atol=1e-8)


def _pairs(count: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pairs, antipodal pairs (midpoint 0, where f(0) = 0 exactly), and near pairs."""
    a = torch.randn(3 * count, dim, dtype=torch.float64)
    b = torch.cat([torch.randn(count, dim, dtype=torch.float64), -a[count:2 * count],
                   a[2 * count:] + 0.05 * torch.randn(count, dim, dtype=torch.float64)])
    return a, b


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("seed", range(3))
def test_midpoint_convexity_for_any_parameters(seed, scale, kind):
    torch.manual_seed(seed)
    net = _scramble(_net(depth=4, reinject_every=2, kind=kind), scale=scale)
    a, b = _pairs(2000, 8)
    gap = 0.5 * (_f(net, a) + _f(net, b)) - _f(net, 0.5 * (a + b))
    assert gap.min().item() >= -1e-9 * (1 + _f(net, a).abs().max().item())


def test_without_the_sign_constraints_the_supportnet_is_not_convex(monkeypatch):
    """The guarantee comes from the softplus reparametrisation: with softplus replaced by the identity
    (raw weights and biases of both signs), the same SupportNet fails the midpoint check above, so the
    check is sharp on the project's network, not only on a hand-made function."""
    from amips_plugin.models import supportnet

    torch.manual_seed(0)
    monkeypatch.setattr(supportnet.F, "softplus", lambda value: value)
    net = _scramble(_net(depth=4, reinject_every=2))
    a, b = _pairs(2000, 8)
    gap = 0.5 * (_f(net, a) + _f(net, b)) - _f(net, 0.5 * (a + b))
    assert gap.min().item() < -1e-3 * (1 + _f(net, a).abs().max().item())


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_toy_support_function_gradient_is_the_key(kind):
    """Keys ±e_i (the cross-polytope): σ(x) = max_i |x_i| and y*(x) = sign(x_j)·e_j, j = argmax |x_i|."""
    dim = 4
    keys = np.concatenate([np.eye(dim), -np.eye(dim)]).astype(np.float32)
    queries = np.random.default_rng(0).normal(size=(3000, dim)).astype(np.float32)
    config = TrainConfig(model=kind, width=32 if kind == "supportnet" else dim, min_match=0, depth=2, steps=1500,
                         batch_size=128, learning_rate=5e-3, noise_copies=0, eval_every=500, patience=10, device="cpu")
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


def test_smoothmax_initialisation_reproduces_the_keys_at_full_rank():
    keys = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    net = SmoothMaxSupportNet(ModelConfig(kind="smoothmax", dim=6, width=6, points=30))
    net.initialise_from_keys(keys)
    points = net.centre + net.coefficients @ net.basis
    torch.testing.assert_close(points, torch.from_numpy(keys), atol=1e-4, rtol=1e-4)


def test_smoothmax_gate_answers_unsure_queries_with_the_radial_key():
    net = _scramble(_net(kind="smoothmax"), scale=1.0)
    x = torch.randn(200, 8, dtype=torch.float64)
    key, radial, confidence = net.gate_inputs(x)
    torch.testing.assert_close((radial * x).sum(dim=1), net.head_scores(x)[:, 0])  # Euler holds for it too
    net.gate_threshold.fill_(float(confidence.median()))
    predicted = net.predict_keys(x)
    unsure = confidence < net.gate_threshold
    assert 0 < unsure.sum() < len(x)
    torch.testing.assert_close(predicted[unsure], radial[unsure])
    torch.testing.assert_close(predicted[~unsure], key[~unsure])


@pytest.mark.parametrize("depth", [1, 2])
def test_negative_raw_biases_cannot_make_f_concave(depth):
    """Isolate a bias: zero input weights, very negative raw biases, one unit read out strongly.

    With biases kept ≥ 0, f(x) = c·‖x‖ with c > 0 (convex); a bias let below zero would drive the
    unit into its linear regime and make f a concave cone, which antipodal pairs expose.
    """
    net = _net(depth=depth, width=1, dim=4, reinject_every=8)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(-20.0)  # every raw weight and bias → softplus ≈ 0
        net.input_layer.weight.zero_()
        net.out_linear.weight.zero_()
        net.input_bias_raw.fill_(-5.0)
        for block in net.hidden:
            block.bias_raw.fill_(-5.0)
            block.weight_raw.fill_(-20.0)
        net.out.weight_raw.fill_(5.0)
    x = torch.randn(100, 4, dtype=torch.float64)
    assert (_f(net, x) + _f(net, -x)).min().item() >= 0.0  # midpoint of x and −x is 0, and f(0) = 0
