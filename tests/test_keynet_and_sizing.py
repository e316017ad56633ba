"""KeyNet shapes and Euler score, parameter budgets, multi-head variants."""
from dataclasses import replace

import pytest
import torch

from amips_plugin.models import (KeyNet, ModelConfig, SupportNet, build_model, count_parameters,
                                 params_fraction, width_for_budget)


@pytest.mark.parametrize("kind", ["keynet", "supportnet"])
@pytest.mark.parametrize("depth,every", [(1, 4), (2, 1), (8, 4)])
def test_width_for_budget_is_the_largest_within_budget(kind, depth, every):
    config = ModelConfig(kind=kind, dim=32, width=1, depth=depth, reinject_every=every)
    budget = 20_000
    width = width_for_budget(config, budget)
    built = build_model(replace(config, width=width))
    assert built.num_parameters() == count_parameters(replace(config, width=width)) <= budget
    assert count_parameters(replace(config, width=width + 1)) > budget


def test_every_parameter_counts_including_reinjection_and_skip():
    config = ModelConfig(kind="keynet", dim=10, width=7, depth=5, reinject_every=2)
    # input 10·7+7, four hidden 7·7+7, re-injections at layers 2 and 4: 2·10·7, output 7·10+10, skip 10
    expected = (10 * 7 + 7) + 4 * (7 * 7 + 7) + 2 * 10 * 7 + (7 * 10 + 10) + 10
    assert KeyNet(config).num_parameters() == expected
    assert params_fraction(expected, num_keys=100, dim=10) == pytest.approx(expected / 1000)


def test_keynet_score_is_euler_inner_product():
    net = KeyNet(ModelConfig(kind="keynet", dim=6, width=9, depth=3))
    x = torch.randn(5, 6)
    score, key = net.score_and_key(x)
    assert key.shape == (5, 6)
    torch.testing.assert_close(score, (key * x).sum(dim=1))


@pytest.mark.parametrize("cls,kind", [(KeyNet, "keynet"), (SupportNet, "supportnet")])
def test_multi_head_scores_and_single_head_guard(cls, kind):
    net = cls(ModelConfig(kind=kind, dim=6, width=9, depth=2, heads=4))
    assert net.head_scores(torch.randn(3, 6)).shape == (3, 4)
    with pytest.raises(ValueError, match="single-head"):
        net.score_and_key(torch.randn(3, 6))


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        ModelConfig(kind="mlp", dim=4, width=4)
    with pytest.raises(ValueError):
        ModelConfig(kind="keynet", dim=4, width=0)
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({"kind": "keynet", "dim": 4, "width": 4, "evil": 1})


def test_a_model_is_bounded_by_its_collection_and_train_refuses_a_larger_one():
    """At most 4·N·d + 2²² parameters: 300,000 SmoothMax points × rank 16 for 300 keys of dimension 16 is over;
    `train` says so (naming the options that size it) instead of publishing a model no search would use."""
    from amips_plugin.core.errors import InputError
    from amips_plugin.models.sizing import PARAMS_FLOOR, oversize_reason, parameter_bound
    from amips_plugin.training import TrainConfig, model_config_for

    assert parameter_bound(300, 16) == 4 * 300 * 16 + PARAMS_FLOOR
    assert oversize_reason(ModelConfig(kind="smoothmax", dim=16, width=16, points=300), 300) is None
    huge = ModelConfig(kind="smoothmax", dim=16, width=16, points=300_000)
    assert "4,800,275 parameters, over the 4,213,504 allowed for 300 keys" in oversize_reason(huge, 300)
    with pytest.raises(InputError, match=r"over the 4,213,504 allowed .*--params-fraction, --points, --width"):
        model_config_for(TrainConfig(points=300_000, width=16), 300, 16)
    with pytest.raises(InputError, match="allowed for 300 keys"):
        model_config_for(TrainConfig(model="supportnet", params_fraction=1e5), 300, 16)
    assert oversize_reason(model_config_for(TrainConfig(params_fraction=4.0), 300, 16), 300) is None
