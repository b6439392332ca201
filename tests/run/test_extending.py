"""Extending nnopt without editing it: a model class and an observer of your own, named by `_target_`.

The classes below live in this test module, as a user's would live in their own package; the
runs name them on the command line (`model=custom model._target_=...`, `+observers.x._target_=...`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import nnopt_cli.run.recipe as runner
from nnopt_cli.errors import ConfigError
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store.folder import read_metrics
from nnopt_cli.training.observers import EpochInfo, Observer, RunInfo, StepInfo, StopRun
from tests.conftest import compose_cfg


class TinyNet(nn.Module):
    """A user's model: built as TinyNet(input_shape, num_classes, act, width=...)."""

    def __init__(self, input_shape, num_classes, act, width: int = 8):
        super().__init__()
        n_in = 1
        for d in input_shape:
            n_in *= d
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(n_in, width), act(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


class CountingObserver(Observer):
    """Counts hook calls, keeps them across resume, and writes them to `file` at the end."""

    def __init__(self, file: str = "counts.json"):
        self.file = file
        self.counts = {"before_step": 0, "after_step": 0, "epochs": 0, "last_step": 0}
        self.run_dir: Path | None = None
        self.loss_sum = 0.0

    def on_run_start(self, run: RunInfo) -> None:
        self.run_dir = run.run_dir

    def before_step(self, step: StepInfo) -> None:
        assert all(p.grad is not None for p in step.model.parameters())  # gradients are there
        self.counts["before_step"] += 1

    def after_step(self, step: StepInfo) -> None:
        self.counts["after_step"] += 1
        self.counts["last_step"] = step.step
        self.loss_sum += float(step.loss.detach())

    def on_epoch_end(self, epoch: EpochInfo) -> None:
        self.counts["epochs"] += 1
        assert epoch.row["epoch"] == epoch.epoch and epoch.step == self.counts["last_step"]

    def on_run_end(self, summary: dict) -> None:
        summary["observed"] = dict(self.counts)
        (self.run_dir / self.file).write_text(json.dumps({**self.counts, "loss_sum": self.loss_sum}))

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "loss_sum": self.loss_sum}

    def load_state_dict(self, state: dict) -> None:
        self.counts, self.loss_sum = dict(state["counts"]), state["loss_sum"]


class PruneAfterFirstEpoch(Observer):
    def on_epoch_end(self, epoch: EpochInfo) -> None:
        raise StopRun("pruned", f"trial pruned at epoch {epoch.epoch}")


# importable by this dotted name in the test process and in a subprocess (PYTHONPATH = the repo)
HERE = "tests.run.test_extending"
USER = ["model=custom", f"model._target_={HERE}.TinyNet", "+model.width=16",
        f"+observers.count._target_={HERE}.CountingObserver", "epochs=3"]


def test_user_model_and_observer_run_end_to_end(tmp_path):
    summary = train(compose_cfg(*USER), RunContext(tmp_path))
    assert summary["status"] == "completed"
    assert summary["params"] == 784 * 16 + 16 + 16 * 10 + 10  # TinyNet(width=16) on 1x28x28, 10 classes
    counts = json.loads((tmp_path / "counts.json").read_text())
    rows = read_metrics(tmp_path / "metrics.jsonl")
    steps = sum(r["steps"] for r in rows)
    assert counts["before_step"] == counts["after_step"] == counts["last_step"] == steps == rows[-1]["total_steps"]
    assert counts["epochs"] == 3 and summary["observed"]["epochs"] == 3
    assert json.loads((tmp_path / "summary.json").read_text())["observed"] == summary["observed"]


class Crash(Exception):
    pass


def test_user_model_and_observer_resume_bit_exact(tmp_path, monkeypatch):
    cfg = compose_cfg(*USER)
    train(cfg, RunContext(tmp_path / "alone"))
    calls = {"n": 0}
    original = runner.evaluate_split

    def crash_in_epoch_2(*args, **kwargs):  # a kill while epoch 2 is validated
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_split", crash_in_epoch_2)
    with pytest.raises(Crash):
        train(cfg, RunContext(tmp_path / "cut"))
    monkeypatch.setattr(runner, "evaluate_split", original)
    summary = train(cfg, RunContext(tmp_path / "cut", resume=True))
    assert summary["status"] == "completed" and summary["resumed_from_epoch"] == 1
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time_s", "train_s")} for r in rows]
    assert strip(read_metrics(tmp_path / "alone/metrics.jsonl")) == strip(read_metrics(tmp_path / "cut/metrics.jsonl"))
    a = torch.load(tmp_path / "alone/model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the observer's own state came back from the checkpoint: same counts, same loss sum to the bit
    assert (tmp_path / "alone/counts.json").read_text() == (tmp_path / "cut/counts.json").read_text()


def test_an_observer_can_end_a_run_as_pruned(tmp_path):
    cfg = compose_cfg(f"+observers.pruner._target_={HERE}.PruneAfterFirstEpoch", "epochs=3")
    summary = train(cfg, RunContext(tmp_path))
    assert summary["status"] == "pruned" and summary["epochs"] == 1 and summary["test/acc"] is None
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 1


def test_no_observer_means_no_hook_calls(tmp_path, monkeypatch):
    calls = []
    for hook in ("before_step", "after_step", "on_epoch_end"):
        monkeypatch.setattr(f"nnopt_cli.training.observers.Observers.{hook}", lambda self, info, h=hook: calls.append(h))
    train(compose_cfg("epochs=1"), RunContext(tmp_path))
    assert calls == []


@pytest.mark.parametrize(("overrides", "key", "text"), [
    (["model=custom", "model._target_=tests.run.test_extending.Nope"], "model._target_", "an importable class"),
    (["model=custom", f"model._target_={HERE}.TinyNet", "+model.depth=3"], "model", "depth"),
    (["model.name=resnet"], "model.name", "one of mlp, cnn"),
    (["+optimizer.betaz=[0.9,0.99]"], "optimizer", "betaz"),
    ([f"+observers.bad._target_={HERE}.TinyNet"], "observers.bad._target_", "Observer"),
    (["+observers.bad._target_=tests.run.test_extending.CountingObserver", "+observers.bad.nope=1"],
     "observers.bad", "nope"),
])
def test_bad_targets_are_one_line_before_any_data(overrides, key, text, monkeypatch):
    monkeypatch.setattr("nnopt_cli.data.load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*overrides))
    assert e.value.key == key and text in str(e.value) and "\n" not in str(e.value)


def test_a_key_the_code_reads_but_the_yaml_lacks_is_one_line():
    cfg = compose_cfg("grad_clip=norm")
    del cfg["grad_clip"]["max_norm"]
    with pytest.raises(ConfigError, match=r"grad_clip.max_norm=None"):
        validate(cfg)
    cfg = compose_cfg()
    del cfg["epochs"]
    with pytest.raises(ConfigError, match=r"<config>.epochs"):
        validate(cfg)


@pytest.mark.slow
def test_user_classes_from_the_command_line(cli, tmp_path):
    out = cli("train", *USER, "dataset=synthetic", "dataset.n_train=256", "dataset.n_test=64",
              "dataset.val_size=32", "device=cpu", "threads=1", "hydra.run.dir=run")
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["observed"]["epochs"] == 3
    assert (tmp_path / "run" / "counts.json").exists()
    bad = cli("train", "model=custom", "model._target_=no_such_pkg.Net", "hydra.run.dir=bad")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "model._target_" in bad.stderr
