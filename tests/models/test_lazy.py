"""Models built from lazy modules (nn.LazyLinear, nn.LazyConv2d) are materialized on one sample
when built: parameters, FLOPs, the optimizer and the initializer see real weights, the same as
the eager twin's."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from nnopt_cli.errors import ConfigError
from nnopt_cli.models import check_model, count_params, make_model
from nnopt_cli.models.flops import forward_flops
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store import layout
from tests.conftest import compose_cfg

HERE = "tests.models.test_lazy"


class LazyNet(nn.Module):
    def __init__(self, input_shape, num_classes, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(width), nn.ReLU(),
                                 nn.LazyLinear(num_classes))

    def forward(self, x):
        return self.net(x)


class EagerNet(nn.Module):
    def __init__(self, input_shape, num_classes, width: int = 16):
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(nn.Conv2d(c, 4, 3), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * (h - 2) * (w - 2), width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("init", ["default", "kaiming_normal"])
def test_a_lazy_model_equals_its_eager_twin(init):
    models = {}
    for cls in ("LazyNet", "EagerNet"):
        cfg = compose_cfg("model=custom", f"model._target_={HERE}.{cls}", f"init={init}")
        torch.manual_seed(0)
        models[cls] = make_model(cfg, (1, 28, 28), 10)
    lazy, eager = models["LazyNet"], models["EagerNet"]
    assert count_params(lazy) == count_params(eager) == 4 * 9 + 4 + 4 * 26 * 26 * 16 + 16 + 16 * 10 + 10
    assert forward_flops(lazy, (1, 28, 28)) == forward_flops(eager, (1, 28, 28)) > 0
    # materialized in the order of the forward pass = construction order: the same initial weights
    for a, b in zip(lazy.state_dict().values(), eager.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert lazy.training  # the materializing pass ran in eval mode and the mode was restored


def test_a_lazy_model_that_does_not_fit_the_input_is_one_line_before_loading():
    check_model({"_target_": f"{HERE}.LazyNet"}, (1, 28, 28), 10)  # on the meta device: no weights made
    with pytest.raises(ConfigError, match="lazy modules fit the input: .*Kernel size.*input shape \\(1, 2, 2\\)"):
        check_model({"_target_": f"{HERE}.LazyNet"}, (1, 2, 2), 10)  # a 3x3 convolution on 2x2 images


def test_a_lazy_model_trains_and_its_summary_matches_the_eager_twin(tmp_path):
    summaries = {}
    for cls in ("LazyNet", "EagerNet"):
        cfg = compose_cfg("model=custom", f"model._target_={HERE}.{cls}", "epochs=1", "optimizer=adam")
        summaries[cls] = train(cfg, RunContext(run_dir=tmp_path / cls, live_progress=False))
        assert summaries[cls]["status"] == layout.Status.COMPLETED
        assert (tmp_path / cls / layout.MODEL).is_file()
    lazy, eager = summaries["LazyNet"], summaries["EagerNet"]
    assert lazy["params"] == eager["params"] and lazy["flops"] == eager["flops"]
    assert lazy["test/acc"] == eager["test/acc"] and math.isclose(lazy["test/loss"], eager["test/loss"])
    assert json.loads((tmp_path / "LazyNet" / layout.SUMMARY).read_text())["data"]["input_shape"] == [1, 28, 28]
