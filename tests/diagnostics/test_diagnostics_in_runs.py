"""Diagnostics in real runs: they change nothing in training, and resume stays bit-exact with them on."""

from __future__ import annotations

import json

import pytest
import torch

from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store.checkpoint import load_checkpoint
from tests.conftest import compose_cfg
from tests.run.test_resume import Crash, assert_same_run, crash_after

# dropout and batch norm: the probe must not draw from the global RNG nor move BN's running statistics
CASE = ["model.dropout=0.3", "model.batch_norm=true", "optimizer=momentum", "scheduler=onecycle", "epochs=3"]


def rows(run):
    return [json.loads(line) for line in (run / "diagnostics.jsonl").read_text().splitlines()]


def test_diagnostics_change_nothing_in_training(tmp_path):
    plain = train(compose_cfg(*CASE), RunContext(tmp_path / "plain"))
    diag = train(compose_cfg(*CASE, "diagnostics=full", "diagnostics.every=2"), RunContext(tmp_path / "diag"))
    assert_same_run(tmp_path / "plain", tmp_path / "diag")
    assert plain["status"] == diag["status"] == "completed"
    got = rows(tmp_path / "diag")
    steps = 3 * (320 // 64)  # TINY: 384 - 64 validation samples in batches of 64
    assert [r["step"] for r in got if r["kind"] == "step"] == list(range(1, steps + 1, 2))
    assert [r["epoch"] for r in got if r["kind"] == "epoch"] == [1, 2, 3]
    assert [r["epoch"] for r in got if r["kind"] == "sharpness"] == [1, 2, 3]  # full: every_epochs=1
    layer = got[0]["layers"]["1"]
    assert layer["type"] == "Linear" and layer["act"] == "3" and 0 <= layer["dead"] <= 1
    assert {"grad_norm", "weight_norm", "update_ratio", "act_mean", "act_std"} <= set(layer)
    end = got[-1]
    assert end["kind"] == "end" and diag["diag/sharpness"] == end["top_eigenvalue"] > 0
    assert diag["diag/dead_share"] == end["dead_share"] and "diag/hessian_trace" in diag
    on_disk = json.loads((tmp_path / "diag" / "summary.json").read_text())
    assert on_disk["diag/sharpness"] == diag["diag/sharpness"]


def test_crash_then_resume_is_bit_exact_with_the_same_diagnostics(tmp_path, monkeypatch):
    cfg = compose_cfg(*CASE, "diagnostics=basic", "diagnostics.every=3")
    train(cfg, RunContext(tmp_path / "alone"))
    with monkeypatch.context() as m:
        crash_after(m, 2)  # epochs 1 and 2 finish, epoch 3's validation "dies" after its steps were logged
        with pytest.raises(Crash):
            train(cfg, RunContext(tmp_path / "cut"))
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 2
    assert max(r["step"] for r in rows(tmp_path / "cut")) > 10  # rows past the checkpoint were written
    train(cfg, RunContext(tmp_path / "cut", resume=True))
    assert_same_run(tmp_path / "alone", tmp_path / "cut")
    assert rows(tmp_path / "alone") == rows(tmp_path / "cut")


def test_saturating_activations_show_in_the_summary(tmp_path):
    s = train(compose_cfg("activation=sigmoid", "diagnostics=basic", "epochs=1"), RunContext(tmp_path / "s"))
    assert 0 <= s["diag/saturated_share"] <= 1 and "diag/dead_share" not in s and "diag/sharpness" not in s
    assert torch.load(tmp_path / "s" / "model.pt", weights_only=True)


@pytest.mark.parametrize("reads", [5, 16])  # mid epoch 1, mid epoch 2 (10 steps per epoch)
def test_interrupt_mid_epoch_then_resume_keeps_the_same_diagnostics(reads, tmp_path, monkeypatch):
    import nnopt_cli.run.recipe as runner
    from tests.training.test_interrupt import StopAfter

    cfg = compose_cfg("epochs=2", "batch_size.size=32", "model.dropout=0.3", "diagnostics=basic",
                      "diagnostics.every=3")
    train(cfg, RunContext(tmp_path / "alone"))
    with monkeypatch.context() as m:
        m.setattr(runner, "Interrupt", lambda: StopAfter(reads))
        assert train(cfg, RunContext(tmp_path / "cut"))["status"] == "interrupted"
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["trainer"]["partial_epoch"] is not None
    train(cfg, RunContext(tmp_path / "cut", resume=True))
    assert_same_run(tmp_path / "alone", tmp_path / "cut")
    assert rows(tmp_path / "alone") == rows(tmp_path / "cut")
