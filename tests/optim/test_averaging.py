"""averaging=ema|swa: the averaged weights against a hand computation, BatchNorm statistics of the
average against the batch moments, state round trip, one-line config errors."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from nnopt_cli.errors import ConfigError
from nnopt_cli.optim.averaging import Averager, recompute_bn
from nnopt_cli.run.validate import validate
from tests.conftest import compose_cfg


def walk(model: nn.Module, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """Move the weights by fixed random amounts, returning the weight after every step."""
    g = torch.Generator().manual_seed(seed)
    seen = []
    for _ in range(steps):
        with torch.no_grad():
            model.weight.add_(torch.randn(model.weight.shape, generator=g))
        seen.append(model.weight.detach().clone())
    return seen


def test_ema_every_two_steps_after_a_start_matches_the_recursion_by_hand():
    node = dict(compose_cfg("averaging=ema")["averaging"], decay=0.9, every=2, start=0.2)
    model = nn.Linear(3, 2)
    avg = Averager.from_config(node, model, total_steps=10)
    ws = []
    g = torch.Generator().manual_seed(0)
    for step in range(1, 11):
        with torch.no_grad():
            model.weight.add_(torch.randn(model.weight.shape, generator=g))
        ws.append(model.weight.detach().clone())
        avg.after_step(model, step)
    # start=0.2 of 10 steps: updates after steps 4, 6, 8, 10; the first copies, then e = 0.9 e + 0.1 w
    e = ws[3]
    for s in (6, 8, 10):
        e = 0.9 * e + 0.1 * ws[s - 1]
    assert int(avg.averaged.n_averaged) == 4
    assert torch.allclose(avg.eval_model(model, torch.zeros(1, 3), 1).weight, e, atol=1e-6)


def test_swa_is_the_mean_of_the_end_of_epoch_weights_from_start_epoch():
    node = dict(compose_cfg("averaging=swa")["averaging"], start_epoch=3)
    model = nn.Linear(3, 2)
    avg = Averager.from_config(node, model, total_steps=100)
    assert avg.eval_model(model, torch.zeros(1, 3), 1) is model  # nothing averaged yet: the raw model
    ws = []
    for epoch in range(1, 7):
        ws += walk(model, 1, seed=epoch)
        avg.end_epoch(model, epoch)
    mean = torch.stack(ws[2:]).mean(0)  # epochs 3..6
    assert torch.allclose(avg.eval_model(model, torch.zeros(1, 3), 1).weight, mean, atol=1e-6)
    assert not avg.schedule_taken_over(6)  # swa_lr null: the run's schedule stays


def test_swalr_takes_over_from_start_epoch():
    node = dict(compose_cfg("averaging=swa", "averaging.swa_lr=0.01")["averaging"], start_epoch=2)
    model = nn.Linear(3, 2)
    avg = Averager.from_config(node, model, total_steps=100)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = avg.swa_scheduler(opt)
    assert type(sched).__name__ == "SWALR" and not avg.schedule_taken_over(1) and avg.schedule_taken_over(2)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # anneal_epochs=1: there after one step


def test_update_bn_gives_the_batch_moments_of_the_average():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    x = torch.randn(64, 4) * 3 + 1
    recompute_bn(model, x, batch_size=16, batches=4)
    h = model[0](x).detach()
    bn = model[1]
    assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-5)
    # update_bn averages the per-batch unbiased variances (cumulative average, momentum=None)
    var = torch.stack([h[i:i + 16].var(0, unbiased=True) for i in range(0, 64, 16)]).mean(0)
    assert torch.allclose(bn.running_var, var, atol=1e-5)


def test_swa_recomputes_batch_norm_for_the_average_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    node = dict(compose_cfg("averaging=swa")["averaging"], start_epoch=1, bn_batches=2)
    avg = Averager.from_config(node, model, total_steps=10)
    raw_mean = model[1].running_mean.clone()
    avg.end_epoch(model, 1)
    x = torch.randn(64, 4) + 2
    averaged = avg.eval_model(model, x, batch_size=8)
    assert torch.allclose(averaged[1].running_mean, averaged[0](x[:16]).detach().mean(0), atol=1e-5)
    assert torch.equal(model[1].running_mean, raw_mean)  # the raw model's statistics are untouched


def test_state_round_trip_is_exact():
    node = compose_cfg("averaging=ema")["averaging"]
    model = nn.Linear(3, 2)
    avg = Averager.from_config(node, model, total_steps=10)
    for step in range(1, 4):
        walk(model, 1, seed=step)
        avg.after_step(model, step)
    state = avg.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = Averager.from_config(node, nn.Linear(3, 2), total_steps=10)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    for a, b in zip(fresh.averaged.state_dict().values(), avg.averaged.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_none_builds_nothing_and_bad_values_are_one_line():
    assert Averager.from_config(compose_cfg()["averaging"], nn.Linear(2, 2), 10) is None
    for overrides, key in ((["averaging=ema", "averaging.decay=1.0"], "averaging.decay"),
                           (["averaging=ema", "averaging.every=0"], "averaging.every"),
                           (["averaging=swa", "averaging.start_epoch=0"], "averaging.start_epoch"),
                           (["averaging=swa", "averaging.swa_lr=-1"], "averaging.swa_lr"),
                           (["averaging=swa", "averaging.swa_lr=0.1", "averaging.anneal_strategy=exp"],
                            "averaging.anneal_strategy")):
        with pytest.raises(ConfigError) as e:
            validate(compose_cfg(*overrides))
        assert e.value.key == key and "\n" not in str(e.value)


def test_trainer_ends_an_epoch_with_the_average_in_the_model_and_reports_the_raw_weights():
    import copy

    from nnopt_cli.data import load_splits
    from nnopt_cli.models import make_model
    from nnopt_cli.training.metrics import evaluate
    from nnopt_cli.training.trainer import Trainer

    cfg = compose_cfg("averaging=swa", "averaging.start_epoch=1", "epochs=2")
    data = load_splits(cfg["dataset"])
    model = make_model(cfg, data.input_shape, data.num_classes)
    trainer = Trainer(cfg, model, len(data.train_x), torch.device("cpu"))
    trainer.train_epoch(1, data.train_x, data.train_y)
    average = trainer.averager.averaged.module.state_dict()
    assert all(torch.equal(v, average[k]) for k, v in model.state_dict().items())
    raw_model = copy.deepcopy(model)
    raw_model.load_state_dict(trainer.weights.raw)
    expected = evaluate(raw_model, data.val_x, data.val_y, 64)
    got = trainer.weights.raw_metrics(data.val_x, data.val_y, 64, "fp32")
    assert got == {"raw/val/loss": expected[0], "raw/val/acc": expected[1]}
    assert all(torch.equal(v, average[k]) for k, v in model.state_dict().items())  # the average is back
    trainer.train_epoch(2, data.train_x, data.train_y)  # trains from the raw weights, then averages again
    assert int(trainer.averager.averaged.n_averaged) == 2


def test_averaging_none_and_no_wrapper_keep_the_fingerprint_of_folders_written_before_them():
    from nnopt_cli.store.checkpoint import config_fingerprint

    cfg = compose_cfg("optimizer=momentum")
    before = {k: v for k, v in cfg.items() if k != "averaging"}  # a config from before the averaging group
    assert "wrapper" not in cfg["optimizer"] and cfg["averaging"] == {"name": "none"}
    assert config_fingerprint(cfg) == config_fingerprint(before)
    assert config_fingerprint(compose_cfg("optimizer=momentum", "averaging=ema")) != config_fingerprint(before)
    assert config_fingerprint(compose_cfg("optimizer=momentum", "optimizer/wrapper=lookahead")) != \
        config_fingerprint(before)
