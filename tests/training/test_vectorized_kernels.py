"""The kernels of a vectorized group's step (training/vectorized.py) compute what each member's own run
computes: its layers on the stacked parameters (StackedLayers), forward and gradient, for every model a
group accepts, and its loss."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import stack_module_state

from nnopt_cli.models.cnn import cnn
from nnopt_cli.models.cnn1d import cnn1d
from nnopt_cli.models.mlp import mlp
from nnopt_cli.training.loss import make_loss
from nnopt_cli.training.vectorized import StackedLayers, members_loss

MODELS = {
    "mlp": (lambda: mlp((1, 40), 10, nn.ReLU, hidden=[32, 16]), (1, 40)),
    "mlp_on_images": (lambda: mlp((1, 8, 8), 10, nn.Tanh, hidden=[24]), (1, 8, 8)),
    "cnn1d": (lambda: cnn1d((1, 40), 10, nn.GELU), (1, 40)),
    "cnn": (lambda: cnn((1, 28, 28), 10, lambda: nn.LeakyReLU(0.1)), (1, 28, 28)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_stacked_layers_match_each_members_own_forward_and_gradient(name):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    members = [build() for _ in range(3)]
    params, _ = stack_module_state(members)
    layers = StackedLayers.of(copy.deepcopy(members[0]).to("meta"))
    assert layers is not None
    x = torch.randn(3, 5, *shape)
    y = torch.randint(0, 10, (3, 5))

    out = layers(params, x)
    assert out.shape == (3, 5, 10)
    loss = sum(nn.functional.cross_entropy(out[i], y[i]) for i in range(3))
    loss.backward()
    for i, model in enumerate(members):
        own = model(x[i])
        torch.testing.assert_close(out[i], own, rtol=1e-5, atol=1e-6)
        nn.functional.cross_entropy(own, y[i]).backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(params[n].grad[i], p.grad, rtol=1e-5, atol=1e-6, msg=f"{name} {n}")


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Linear(4, 4), nn.PReLU(), nn.Linear(4, 2)),  # a layer with weights of its own kind
    nn.Sequential(nn.Flatten(0), nn.Linear(4, 2)),  # flattens the batch dimension too
    nn.Sequential(nn.Conv1d(1, 2, 3, padding="same"), nn.Flatten(), nn.Linear(8, 2)),
    nn.Linear(4, 2),  # not a Sequential
])
def test_a_model_with_any_other_layer_is_left_to_vmap(model):
    assert StackedLayers.of(model) is None


@pytest.mark.parametrize("node", [None, {"name": "cross_entropy"}, {"name": "label_smoothing", "smoothing": 0.2}])
def test_eachmembers_loss_is_its_own_runs_batch_mean(node):
    torch.manual_seed(0)
    out, y = torch.randn(4, 6, 10), torch.randint(0, 10, (4, 6))
    own = make_loss(node)
    expected = torch.stack([own(out[i], y[i]) for i in range(4)])
    torch.testing.assert_close(members_loss(node)(out, y), expected, rtol=1e-6, atol=1e-7)
