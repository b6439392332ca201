"""Components on their own, without Hydra: initializers, batch-size policies, penalties, models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnopt_cli.models import cnn, count_params, mlp
from nnopt_cli.models.activation import activation_factory
from nnopt_cli.models.init import INITS, init_weights
from nnopt_cli.optim.batch_size import BatchSizePolicy
from nnopt_cli.training.regularizer import Penalty


def wide_mlp():
    torch.manual_seed(0)
    return mlp((1, 28, 28), 10, activation_factory("relu"), hidden=[512])


@pytest.mark.parametrize("name", [n for n in INITS if n != "default"])
def test_initializers_set_the_documented_variance(name):
    model = wide_mlp()
    init_weights(model, name, "relu")
    w = model[1].weight  # Linear(784, 512)
    fan_in, fan_out = 784, 512
    expected = {
        "xavier_uniform": 2 * 2 / (fan_in + fan_out),  # gain^2 * 2/(fan_in+fan_out), gain=sqrt(2) for relu
        "xavier_normal": 2 * 2 / (fan_in + fan_out),
        "kaiming_uniform": 2 / fan_in,
        "kaiming_normal": 2 / fan_in,
        "orthogonal": 2 / fan_in,  # rows orthonormal (scaled by gain): var = gain^2 / fan_in
    }[name]
    assert w.var().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(model[1].bias) == 0


def test_default_init_keeps_pytorch_layers():
    torch.manual_seed(0)
    a = wide_mlp()
    b = wide_mlp()
    init_weights(b, "default", "relu")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_mlp_and_cnn_shapes_and_options():
    act = activation_factory("tanh")
    m = mlp((1, 28, 28), 10, act, hidden=[300, 100], dropout=0.2, batch_norm=True)
    assert count_params(m) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 + 2 * (300 + 100)
    assert sum(isinstance(x, nn.Dropout) for x in m) == 2 and sum(isinstance(x, nn.BatchNorm1d) for x in m) == 2
    c = cnn((1, 28, 28), 10, act)
    # LeNet-5: conv1 6x(1x5x5), conv2 16x(6x5x5), fc 400-120-84-10
    assert count_params(c) == (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert c(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_batch_size_policies():
    fixed = BatchSizePolicy("fixed", 100, epochs=3)
    assert fixed.epoch_sizes(0, 250) == [100, 100, 50]
    ramp = BatchSizePolicy("ramp", 32, epochs=5, start=32, end=512)
    assert [ramp.epoch_size(e) for e in range(5)] == [32, 152, 272, 392, 512]
    double = BatchSizePolicy("double", 64, epochs=6, every=2, factor=2, max_size=200)
    assert [double.epoch_size(e) for e in range(6)] == [64, 64, 128, 128, 200, 200]
    smith = BatchSizePolicy("double", 64, epochs=6, factor=10, growth_epochs=[2, 4], max_size=10**6)
    assert [smith.epoch_size(e) for e in range(6)] == [64, 64, 640, 640, 6400, 6400]
    rnd = BatchSizePolicy("random", 128, epochs=2, min_size=10, max_size=50, seed=1)
    sizes = rnd.epoch_sizes(0, 1000)
    assert sum(sizes) == 1000 and all(s <= 50 for s in sizes) and min(sizes[:-1]) >= 10
    assert len(set(sizes)) > 5 and rnd.epoch_sizes(0, 1000) == sizes  # seeded: reproducible
    assert rnd.epoch_sizes(1, 1000) != sizes
    assert rnd.total_steps(1000) == len(sizes) + len(rnd.epoch_sizes(1, 1000))


def test_lr_scaling_rules():
    lin = BatchSizePolicy("fixed", 256, epochs=1, lr_scaling="linear", base_size=128)
    sq = BatchSizePolicy("fixed", 256, epochs=1, lr_scaling="sqrt", base_size=128)
    assert lin.lr_factor(512) == 4 and sq.lr_factor(512) == 2
    assert BatchSizePolicy("fixed", 64, epochs=1).lr_factor(512) == 1


def test_penalties_match_hand_computation():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-0.5)
    params = Penalty.penalized(model)
    assert len(params) == 2  # weights only, biases excluded
    n_w = 3 * 2 + 2 * 1
    assert Penalty(l1=0.1)(params).item() == pytest.approx(0.1 * 0.5 * n_w)
    assert Penalty(l2=0.1)(params).item() == pytest.approx(0.1 * 0.25 * n_w)
    el = Penalty.from_config({"elastic": {"weight": 0.2, "l1_ratio": 0.25}})
    assert (el.l1, el.l2) == pytest.approx((0.05, 0.15))
    both = Penalty.from_config({"l1": {"weight": 1e-3}, "l2": {"weight": 2e-3}})
    assert (both.l1, both.l2) == (1e-3, 2e-3)
    assert Penalty.from_config({}) is None
    assert math.isfinite(both(params).item())
