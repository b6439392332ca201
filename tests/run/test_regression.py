"""dataset=regression: metrics by hand, a 10-10-1 MLP with Adam near the noise floor, every group
but the class-only ones working, and those refused in one line."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnopt_cli.compare.discover import discover
from nnopt_cli.compare.table import default_metrics
from nnopt_cli.data import load_splits
from nnopt_cli.errors import ConfigError
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store.folder import read_metrics
from nnopt_cli.training.metrics import evaluate_split
from tests.conftest import compose_cfg

REG = ["dataset=regression", "loss=mse", "model.hidden=[10]", "device=cpu", "threads=1"]


def reg_cfg(*overrides: str) -> dict:
    return compose_cfg(*REG, *overrides, tiny=False)


def test_mse_rmse_r2_by_hand():
    pred, target = [1.0, 2.0, 0.5, -1.0], [1.5, 2.0, 0.0, -2.0]
    got = evaluate_split(nn.Identity(), torch.tensor(pred).unsqueeze(1), torch.tensor(target), batch_size=3)
    sse = 0.5 ** 2 + 0 + 0.5 ** 2 + 1.0 ** 2  # 1.5
    mean = sum(target) / 4  # 0.375
    sst = sum((t - mean) ** 2 for t in target)
    assert got["mse"] == pytest.approx(sse / 4) and got["loss"] == got["mse"]
    assert got["rmse"] == pytest.approx(math.sqrt(sse / 4))
    assert got["r2"] == pytest.approx(1 - sse / sst)
    assert "acc" not in got


def test_targets_are_seeded_floats_with_the_stated_noise():
    node = reg_cfg("dataset.noise=0.3")["dataset"]
    a, b = load_splits(node), load_splits(node)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_y.dtype == torch.float32 and a.input_shape == (10,) and a.num_classes == 1
    from nnopt_cli.data.regression import teacher
    residual = a.test_y - teacher(a.test_x, node["teacher_hidden"], node["seed"])
    assert residual.std().item() == pytest.approx(0.3, rel=0.1)  # 1024 draws of N(0, 0.3^2)


def test_a_10_10_1_mlp_with_adam_gets_near_the_noise_floor(tmp_path):
    # 896 training samples, 40 epochs: within 3x of sigma^2 (about 2x in practice)
    summary = train(reg_cfg("optimizer=adam", "optimizer.lr=0.01", "epochs=40"), RunContext(tmp_path))
    assert summary["noise_floor"] == pytest.approx(0.1 ** 2)
    assert summary["noise_floor"] < summary["test/mse"] < 3 * summary["noise_floor"]
    assert summary["test/r2"] > 0.85 and "test/acc" not in summary
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert "train/acc" not in rows[-1] and "val/acc" not in rows[-1] and rows[-1]["val/rmse"] > 0
    assert summary["best/val/loss"] == min(r["val/loss"] for r in rows)
    # compare shows the task's own metrics first
    runs = discover([tmp_path])
    assert default_metrics(runs)[:4] == ["test/rmse", "test/r2", "test/loss", "noise_floor"]
    from nnopt_cli.cli.ls import runs_table  # nnopt ls adds the regression's headline
    assert runs_table(runs, 0).rows[0]["test/rmse"] == summary["test/rmse"]


@pytest.mark.parametrize("group", [
    ["optimizer=sgd", "scheduler=cosine"], ["optimizer=momentum", "scheduler=plateau"],
    ["regularizer=l2", "batch_size=ramp"], ["averaging=ema", "grad_clip=norm", "loss=huber"],
    ["early_stopping.enabled=true", "early_stopping.patience=1", "eval_every_steps=3"],
])
def test_other_groups_work_on_regression(group, tmp_path):
    summary = train(reg_cfg(*group, "epochs=3"), RunContext(tmp_path))
    assert summary["status"] == "completed" and math.isfinite(summary["test/rmse"])


@pytest.mark.parametrize(("override", "key"), [
    (["loss=cross_entropy"], "loss"),
    (["loss=label_smoothing"], "loss"),
    (["batch_size.sampler=balanced"], "batch_size.sampler"),
    (["early_stopping.enabled=true", "early_stopping.monitor=val/acc"], "early_stopping.monitor"),
    (["scheduler=plateau", "scheduler.monitor=val/acc"], "scheduler.monitor"),
    (["post=quantize"], "post"),
    (["post=[prune,distill]"], "post"),
    (["+dataset.imbalance=10"], "dataset.imbalance"),
    (["dataset.noise=-1"], "dataset.noise"),
])
def test_class_only_settings_are_refused_in_one_line(override, key):
    with pytest.raises(ConfigError) as e:
        validate(reg_cfg(*override))
    assert e.value.key == key and "\n" not in str(e.value)


def test_huber_on_a_classification_dataset_is_refused():
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg("loss=huber"))
    assert e.value.key == "loss" and "dataset=regression" in str(e.value)


def test_prune_measures_the_pruned_model_by_its_rmse(tmp_path):
    summary = train(reg_cfg("epochs=2", "post=prune"), RunContext(tmp_path))
    stage = summary["stages"][0]
    assert stage["status"] == "completed" and "test/acc" not in stage["after"]
    assert stage["after"]["test/rmse"] == pytest.approx(math.sqrt(stage["after"]["test/mse"]))
    assert stage["after"]["sparsity"] > stage["before"]["sparsity"]


def test_a_killed_regression_run_resumes_bit_exact(tmp_path, monkeypatch):
    from tests.run.test_resume import Crash, crash_after, strip_time

    cfg = reg_cfg("epochs=3", "optimizer.lr=0.01", "checkpoint.keep=best")
    whole = train(cfg, RunContext(tmp_path / "alone"))
    with monkeypatch.context() as m:
        crash_after(m, 2)  # killed while epoch 3 is validated
        with pytest.raises(Crash):
            train(cfg, RunContext(tmp_path / "cut"))
    resumed = train(cfg, RunContext(tmp_path / "cut", resume=True))
    assert strip_time(read_metrics(tmp_path / "alone" / "metrics.jsonl")) == \
        strip_time(read_metrics(tmp_path / "cut" / "metrics.jsonl"))
    for key in ("test/mse", "test/r2", "best/val/loss", "best/val/epoch", "noise_floor"):
        assert whole[key] == resumed[key], key


def test_tune_lr_refuses_regression_before_any_run(tmp_path, capsys):
    from nnopt_cli.cli.tune_lr import run as tune_lr

    with pytest.raises(SystemExit) as e:
        tune_lr([*REG, "epochs=1", "--optimizers", "adam", "--lrs", "2", "--dir", str(tmp_path / "study")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "dataset='regression'" in err and "tune.objective=best/val/loss" in err
    assert not (tmp_path / "study").exists()


def test_compare_takes_the_class_metrics_as_metrics(tmp_path):
    from nnopt_cli.compare.table import metric_names

    train(compose_cfg("epochs=1", "dataset.imbalance=5"), RunContext(tmp_path))
    names = metric_names(discover([tmp_path]))
    assert {"test/balanced_acc", "test/macro_f1", "val/balanced_acc", "val/macro_f1"} <= set(names)
