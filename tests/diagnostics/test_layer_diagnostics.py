"""Per-layer diagnostics and sharpness, each against a hand count or a dense computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnopt_cli.config import conf_dir
from nnopt_cli.diagnostics import sharpness, stats
from nnopt_cli.diagnostics.layers import LayerDiagnostics
from nnopt_cli.errors import ConfigError
from nnopt_cli.run.validate import validate
from nnopt_cli.store.checkpoint import config_fingerprint
from nnopt_cli.training.observers import EpochInfo, RunInfo, StepInfo, build_observers
from tests.conftest import compose_cfg


def linear(w, b) -> nn.Linear:
    w = torch.tensor(w, dtype=torch.float32)
    m = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(torch.tensor(b, dtype=torch.float32))
    return m


def test_layers_pair_each_linear_or_conv_with_the_activation_after_it():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 4),
                          nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 2))
    found = [(x.name, x.kind, x.act_name) for x in stats.find_layers(model)]
    assert found == [("0", "Conv2d", "2"), ("4", "Linear", "5"), ("7", "Linear", None)]


def test_probe_counts_a_dead_relu_unit_and_hand_computed_means():
    # unit 1 has a negative pre-activation for every probe sample: dead; units 0 and 2 fire somewhere
    model = nn.Sequential(linear([[1, 0], [-1, -1], [0, 1]], [0, -10, 0]), nn.ReLU(), linear([[1, 1, 1]], [0]))
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    model.train()
    s = stats.probe(model, stats.find_layers(model), x, saturation=0.02)
    pre = np.array([[1, -13, 2], [3, -12, -1], [0.5, -11, 0.5]])
    act = np.maximum(pre, 0)
    assert s["0"]["dead"].item() == pytest.approx(1 / 3)
    assert s["0"]["out_mean"].item() == pytest.approx(pre.mean())
    assert s["0"]["out_std"].item() == pytest.approx(pre.std(ddof=1), rel=1e-6)
    assert s["0"]["act_mean"].item() == pytest.approx(act.mean())
    assert s["0"]["act_std"].item() == pytest.approx(act.std(ddof=1), rel=1e-6)
    assert "act_mean" not in s["2"] and s["2"]["out_mean"].item() == pytest.approx(act.sum(1).mean())
    assert stats.totals(s)["dead_share"].item() == pytest.approx(1 / 3)
    assert model.training  # mode restored
    assert not model[0]._forward_hooks and not model[1]._forward_hooks  # hooks removed


@pytest.mark.parametrize("act, bounds", [(nn.Sigmoid(), (0, 1)), (nn.Tanh(), (-1, 1))])
def test_probe_counts_saturated_values_near_the_bounds(act, bounds):
    # unit 0: 100 * x saturates for |x| = 1; unit 1: 0.01 * x stays in the middle; x = 0.001 does not saturate
    model = nn.Sequential(linear([[100.0], [0.01]], [0, 0]), act)
    x = torch.tensor([[1.0], [-1.0], [0.001]])
    s = stats.probe(model, stats.find_layers(model), x, saturation=0.02)
    out = act(model[0](x)).detach().numpy()
    lo, hi = bounds
    expected = ((out <= lo + 0.02) | (out >= hi - 0.02)).mean()
    assert expected == pytest.approx(2 / 6)  # the hand count: unit 0 at x = +-1
    assert s["0"]["saturated"].item() == pytest.approx(expected)
    assert "dead" not in s["0"]


def test_a_conv_channel_is_dead_only_if_negative_at_every_position():
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.zero_()
    x = torch.full((2, 1, 3, 3), 1.0)
    x[1, 0, 2, 2] = -5.0  # one position of one sample makes channel 1 alive
    model = nn.Sequential(conv, nn.ReLU())
    assert stats.probe(model, stats.find_layers(model), x, 0.02)["0"]["dead"].item() == 0.0
    x[1, 0, 2, 2] = 1.0
    assert stats.probe(model, stats.find_layers(model), x, 0.02)["0"]["dead"].item() == 0.5


def hand_run(tmp_path, model, x, y, obs, steps=3, lr=0.1):
    """Drive an observer like the training loop does (SGD on full batch); returns the updates seen."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    obs.on_run_start(RunInfo({}, tmp_path, model, opt, x, y))
    ratios = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        info = StepInfo(1, step, model, opt, loss, len(x))
        obs.before_step(info)
        w0, g = model[0].weight.detach().clone(), model[0].weight.grad.clone()
        opt.step()
        ratios.append(((lr * g).norm() / w0.norm()).item())
        obs.after_step(info)
    obs.on_epoch_end(EpochInfo(1, {}, model, opt, steps))
    return ratios


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_observer_rows_update_ratio_by_hand_and_no_global_rng_draw(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    obs = LayerDiagnostics(every=2, probe_size=8)
    rng = torch.get_rng_state()
    ratios = hand_run(tmp_path, model, x, y, obs, steps=3)
    obs.on_run_end({"status": "completed", "epochs": 1})
    obs.close()
    assert torch.equal(rng, torch.get_rng_state())
    rows = read_rows(tmp_path / "diagnostics.jsonl")
    assert [(r["kind"], r["step"]) for r in rows] == [("step", 1), ("step", 3), ("epoch", 3), ("end", 3)]
    for row, want in zip(rows[:2], (ratios[0], ratios[2]), strict=True):
        assert row["layers"]["0"]["update_ratio"] == pytest.approx(want, rel=1e-5)
    assert rows[2]["layers"]["0"]["weight_norm"] == pytest.approx(model[0].weight.norm().item(), rel=1e-6)
    assert set(rows[0]["layers"]) == {"0", "2"} and rows[0]["layers"]["0"]["act"] == "1"


def test_observer_resume_drops_rows_past_the_checkpointed_step(tmp_path):
    path = tmp_path / "diagnostics.jsonl"
    path.write_text("".join(json.dumps({"kind": "step", "step": s}) + "\n" for s in (1, 11, 21)) + '{"kind": "st')
    obs = LayerDiagnostics(every=10)
    obs.load_state_dict({"step": 11})
    model = nn.Sequential(nn.Linear(2, 2))
    obs.on_run_start(RunInfo({}, tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1),
                             torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)))
    obs.close()
    assert [r["step"] for r in read_rows(path)] == [1, 11]


@pytest.mark.parametrize("settings, key", [
    ({"every": 0}, "diagnostics.every"),
    ({"probe_size": 1.5}, "diagnostics.probe_size"),
    ({"saturation": 0.5}, "diagnostics.saturation"),
    ({"epoch_end": "yes"}, "diagnostics.epoch_end"),
    ({"sharpness": {"iters": 0}}, "diagnostics.sharpness.iters"),
    ({"sharpness": {"epochs": [0]}}, "diagnostics.sharpness.epochs"),
    ({"sharpness": {"itres": 5}}, "diagnostics.sharpness.itres"),
    ({"sharpness": 3}, "diagnostics.sharpness"),
])
def test_bad_settings_are_one_line_naming_the_key(settings, key):
    with pytest.raises(ConfigError) as e:
        LayerDiagnostics(**settings)
    assert e.value.key == key and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- sharpness vs dense Hessian


def tiny_problem():
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    return model, x, y


def dense_hessian(model, x, y) -> np.ndarray:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        parts, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            parts[n] = theta[i:i + s.numel()].view(s)
            i += s.numel()
        return F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat).numpy()


def test_top_eigenvalue_matches_the_dense_hessian():
    model, x, y = tiny_problem()
    eig = np.linalg.eigvalsh(dense_hessian(model, x, y))
    largest = eig[np.argmax(np.abs(eig))]
    op = sharpness.HessianOperator(model, x, y)
    value, _, converged = sharpness.top_eigenvalue(op, torch.Generator().manual_seed(0), iters=2000, tol=1e-10)
    assert converged
    assert value == pytest.approx(largest, rel=1e-6)
    out = sharpness.measure(model, x, y, iters=2000, tol=1e-10, trace_samples=0)
    assert out["top_eigenvalue"] == pytest.approx(largest, rel=1e-6)


def test_hutchinson_trace_is_the_mean_of_z_h_z_and_near_the_dense_trace():
    model, x, y = tiny_problem()
    h = dense_hessian(model, x, y)
    op = sharpness.HessianOperator(model, x, y)
    est, err = sharpness.hutchinson_trace(op, torch.Generator().manual_seed(5), samples=50)
    replay = torch.Generator().manual_seed(5)
    zs = [torch.cat([t.reshape(-1) for t in op.random(replay, rademacher=True)]).numpy() for _ in range(50)]
    assert set(np.unique(np.concatenate(zs))) == {-1.0, 1.0}
    assert est == pytest.approx(np.mean([z @ h @ z for z in zs]), rel=1e-6)
    many, many_err = sharpness.hutchinson_trace(op, torch.Generator().manual_seed(6), samples=400)
    assert abs(many - np.trace(h)) < 5 * many_err  # unbiased: within 5 standard errors
    assert many_err < 0.2 * abs(np.trace(h))  # and informative


def test_sharpness_leaves_grads_mode_and_global_rng_alone():
    model, x, y = tiny_problem()
    model.train()
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    sharpness.measure(model, x, y, iters=5, trace_samples=3)
    assert torch.equal(rng, torch.get_rng_state()) and model.training
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))


@pytest.mark.parametrize("preset", sorted(p.stem for p in (conf_dir() / "diagnostics").glob("*.yaml")))
def test_each_preset_composes_validates_and_builds(preset):
    cfg = compose_cfg(f"diagnostics={preset}")
    validate(cfg)
    (obs,) = build_observers(cfg)
    assert isinstance(obs, LayerDiagnostics) and bool(obs.sharpness) == (preset == "full")


def test_diagnostics_are_off_by_default_and_keep_old_fingerprints():
    cfg = compose_cfg()
    assert cfg.get("diagnostics") is None and not build_observers(cfg)
    assert config_fingerprint(cfg) == config_fingerprint({k: v for k, v in cfg.items() if k != "diagnostics"})
