"""Threshold pruning (|w| < tau, unit norm < tau) and the threshold every prune stage reports."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from nnopt_cli.errors import ConfigError
from nnopt_cli.post.prune import make_permanent, prune_below, prune_to, thresholds
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from tests.conftest import compose_cfg

FAST = ["post.measure.latency_repeats=2", "post.measure.latency_warmup=0", "post.measure.latency_batch_sizes=[1]"]

# fixed weights: a 3x4 hidden layer and a 2x3 output layer
W1 = [[0.50, -0.04, 0.10, -0.30],
      [0.02, 0.00, -0.09, 0.70],
      [-0.11, 0.06, 0.40, -0.01]]
W2 = [[0.08, -0.20, 0.05],
      [-0.30, 0.01, 0.12]]


def fixed_mlp() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(W1))
        model[2].weight.copy_(torch.tensor(W2))
        model[0].bias.fill_(0.1)
        model[2].bias.fill_(0.1)
    return model


def test_global_threshold_zeros_exactly_the_weights_below_tau():
    model = fixed_mlp()
    prune_below(model, "global", 0.1)
    # by hand, |w| < 0.1: W1 has -0.04, 0.02, 0.00, -0.09, 0.06, -0.01 (0.10 stays), W2 has 0.08, 0.05, 0.01
    zeros = [int((m.weight == 0).sum()) for m in (model[0], model[2])]
    assert zeros == [6, 3]
    assert isinstance(model[0]._forward_pre_hooks[next(iter(model[0]._forward_pre_hooks))], prune.BasePruningMethod)
    assert bool((model[0].weight_orig == torch.tensor(W1)).all())  # torch's reparametrization keeps the values
    report = thresholds(model, "global", used=0.1)
    assert report["0"] == {"threshold": 0.1, "largest_pruned": pytest.approx(0.09), "smallest_kept": pytest.approx(0.10),
                           "pruned": 6, "of": 12}
    assert report["2"]["pruned"] == 3 and report["2"]["largest_pruned"] == pytest.approx(0.08)
    make_permanent(model)
    assert int((model[0].weight == 0).sum()) == 6 and not prune.is_pruned(model[0])


def test_output_layer_left_alone_when_asked():
    model = fixed_mlp()
    prune_below(model, "global", 0.1, include_last=False)
    assert int((model[0].weight == 0).sum()) == 6 and int((model[2].weight == 0).sum()) == 0


def test_layer_threshold_scales_tau_by_each_layers_std():
    model = fixed_mlp()
    std1, std2 = torch.tensor(W1).std().item(), torch.tensor(W2).std().item()  # sample std, as torch
    prune_below(model, "layer", 0.5)
    expected = [sum(abs(v) < 0.5 * std for row in w for v in row) for w, std in ((W1, std1), (W2, std2))]
    assert [int((m.weight == 0).sum()) for m in (model[0], model[2])] == expected
    report = thresholds(model, "layer", used=0.5)
    assert report["0"]["threshold"] == pytest.approx(0.5 * std1) and report["2"]["threshold"] == pytest.approx(0.5 * std2)


def test_structured_threshold_removes_units_whose_norm_is_below_tau():
    model = fixed_mlp()
    norms = torch.tensor(W1).norm(dim=1)  # 0.595, 0.7064, 0.4168
    prune_below(model, "structured", 0.6, norm=2)
    dead = ~model[0].weight.ne(0).any(1)
    assert dead.tolist() == [True, False, True] and bool((model[0].bias[dead] == 0).all())
    assert int((model[2].weight == 0).sum()) == 0  # the output layer keeps every class
    report = thresholds(model, "structured", norm=2, used=0.6)
    assert report["0"]["largest_pruned"] == pytest.approx(float(norms[0])) and report["0"]["pruned"] == 2


def test_structured_threshold_keeps_the_largest_unit():
    model = fixed_mlp()
    prune_below(model, "structured", 10.0)
    assert (~model[0].weight.ne(0).any(1)).tolist() == [True, False, True]


def test_a_fraction_reports_the_threshold_it_implied():
    model = fixed_mlp()
    prune_to(model, "layer", 0.5)
    report = thresholds(model, "layer")
    flat = sorted(abs(v) for row in W1 for v in row)  # 6 of 12 pruned: the 6 smallest
    assert report["0"]["largest_pruned"] == pytest.approx(flat[5]) and report["0"]["smallest_kept"] == pytest.approx(flat[6])
    assert report["0"]["threshold"] == report["0"]["smallest_kept"]


@pytest.mark.parametrize("overrides", [
    ["post.prune.threshold=0.05"],                             # both set (sparsity defaults to 0.9)
    ["post.prune.sparsity=null"],                              # neither
])
def test_exactly_one_of_sparsity_and_threshold(overrides):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("post=prune", *overrides))
    assert err.value.key == "post.prune.threshold" and "exactly one" in str(err.value) and "\n" not in str(err.value)


def test_a_threshold_must_be_positive():
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("post=prune", "post.prune.sparsity=null", "post.prune.threshold=0"))
    assert err.value.key == "post.prune.threshold"


def test_threshold_stage_records_thresholds_per_round_and_layer(tmp_path):
    cfg = compose_cfg("post=prune", "model.hidden=[32]", "post.prune.sparsity=null", "post.prune.threshold=0.04",
                      "post.prune.rounds=2", "post.prune.schedule=linear", "post.prune.compact=false", *FAST)
    summary = train(cfg, RunContext(run_dir=tmp_path))
    stage = summary["stages"][0]
    assert stage["status"] == "completed"
    assert [r["threshold"] for r in stage["rounds"]] == pytest.approx([0.02, 0.04])
    assert set(stage["thresholds"]) == {"1", "3"} and all(t["threshold"] == 0.04 for t in stage["thresholds"].values())
    state = torch.load(tmp_path / "model.pruned.pt", weights_only=True)
    zeros = sum(int((state[f"{k}.weight"] == 0).sum()) for k in ("1", "3"))
    # fine-tuning between rounds moves weights, so the last round's own count is the reference
    assert zeros == sum(t["pruned"] for t in stage["thresholds"].values())
    assert all(t["largest_pruned"] is None or t["largest_pruned"] < 0.04 + 1e-6 for t in stage["thresholds"].values())
