"""async_sgd=hogwild: worker processes train shared CPU weights; the parent writes the run folder."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys

import pytest
import torch

import nnopt_cli.run.recipe as runner
from nnopt_cli.errors import ConfigError
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store import layout
from nnopt_cli.store.checkpoint import load_checkpoint
from nnopt_cli.store.folder import read_metrics
from nnopt_cli.training.hogwild import HogwildTrainer, async_summary, is_hogwild
from tests.conftest import REPO, TINY, compose_cfg
from tests.hold import hold_overrides, release, wait_until_held
from tests.training.test_interrupt import StopAfter

HOGWILD = ["async_sgd=hogwild", "async_sgd.workers=2", "optimizer=momentum", "batch_size.size=16"]
N_TRAIN = 320  # TINY: 384 samples, 64 of them for validation


@pytest.mark.slow
def test_two_workers_train_above_chance_into_a_normal_run_folder(tmp_path):
    summary = train(compose_cfg(*HOGWILD), RunContext(tmp_path))
    assert summary["status"] == layout.Status.COMPLETED
    assert summary["async_sgd"] == {"mode": "hogwild", "workers": 2, "bit_reproducible": False}
    assert summary["test/acc"] > 0.5  # 10 classes: chance is 0.1
    rows = read_metrics(tmp_path / layout.METRICS)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["val/acc"] > 0.5
    # every sample once per epoch, split between the workers: 160 each, 10 steps of 16
    assert [r["samples_seen"] for r in rows] == [N_TRAIN, 2 * N_TRAIN]
    assert [r["steps"] for r in rows] == [20, 20] and rows[-1]["total_steps"] == 40
    for name in (layout.SUMMARY, layout.METRICS, "model.pt", "checkpoint.pt", "model.init.pt"):
        assert (tmp_path / name).exists(), name
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    init = torch.load(tmp_path / "model.init.pt", weights_only=True)
    assert any(not torch.equal(saved[k], init[k]) for k in saved)  # the workers' steps reached the saved weights
    workers = load_checkpoint(tmp_path / "checkpoint.pt")["trainer"]["hogwild"]["workers"]
    assert len(workers) == 2 and all(w["optimizer"]["state"] for w in workers)  # momentum buffers, per worker


@pytest.mark.slow
def test_stop_mid_epoch_checkpoints_every_worker_and_resumes(tmp_path, monkeypatch):
    # a long first epoch (2 workers x 1500 steps of 2, 0.1 s at least): the stop reaches them while they train
    n, per_worker = 6000, 3000
    # onecycle: a per-step schedule over each worker's steps of the run, resumed mid-epoch (one step
    # too many and torch's OneCycleLR raises)
    cfg = compose_cfg(*HOGWILD, "batch_size.size=2", "optimizer.lr=0.01", f"dataset.n_train={n + 64}", "epochs=2",
                      "scheduler=onecycle")
    with monkeypatch.context() as m:
        # flag looks: the start of epoch 1, the parent's look before handing out the epoch, then (the
        # stop) its first look while it waits for the workers
        m.setattr(runner, "Interrupt", lambda: StopAfter(2))
        summary = train(cfg, RunContext(tmp_path))
    assert summary["status"] == layout.Status.INTERRUPTED and summary["epochs"] == 0
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    partial = ckpt["trainer"]["partial_epoch"]
    assert partial["epoch"] == 1 and len(partial["cut"]) + len(partial["finished"]) == 2
    assert partial["cut"]  # at least one worker was cut inside its share
    done = ckpt["trainer"]["counters"]["samples_seen"]
    assert done == sum(2 * int(c["step"]) for c in partial["cut"].values()) + per_worker * len(partial["finished"])
    assert done < n

    resumed = train(cfg, RunContext(tmp_path, resume=True))
    assert resumed["status"] == layout.Status.COMPLETED and resumed["resumed_from_epoch"] == 0
    rows = read_metrics(tmp_path / layout.METRICS)
    # the cut epoch is finished, not redone: each sample exactly once per epoch over both processes' work
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["samples_seen"] for r in rows] == [n, 2 * n] and [r["steps"] for r in rows] == [n // 2, n // 2]
    assert resumed["test/acc"] > 0.5


@pytest.mark.slow
def test_a_worker_that_diverges_ends_the_run_as_diverged(tmp_path):
    summary = train(compose_cfg(*HOGWILD, "optimizer.lr=1e8"), RunContext(tmp_path))
    assert summary["status"] == layout.Status.DIVERGED and summary["diverged_at"]["epoch"] == 1
    assert summary["test/acc"] is None and read_metrics(tmp_path / layout.METRICS) == []


def test_epoch_row_sums_over_the_workers_shares():
    cfg = compose_cfg(*HOGWILD, "async_sgd.workers=2")
    model = torch.nn.Linear(3, 2)
    trainer = HogwildTrainer(cfg, model, 5, torch.device("cpu"))  # no worker starts before start()
    rows = [{"train/loss": 1.0, "train/acc": 2 / 3, "lr": 0.05, "batch_size": 16, "steps": 1, "grad_norm": 2.0},
            {"train/loss": 2.0, "train/acc": 1 / 2, "lr": 0.05, "batch_size": 16, "steps": 1, "grad_norm": None}]
    row = trainer._epoch_row(rows, 5)  # shares of 5 samples: 3 (0, 2, 4) and 2 (1, 3)
    assert row["train/loss"] == pytest.approx((3 * 1.0 + 2 * 2.0) / 5)
    assert row["train/acc"] == pytest.approx(3 / 5)  # 2 of 3 and 1 of 2 correct
    assert row["steps"] == 2 and row["grad_norm"] == 2.0 and row["lr"] == 0.05


def test_a_config_from_before_the_group_is_synchronous():
    cfg = compose_cfg()
    del cfg["async_sgd"]
    validate(cfg)
    assert async_summary(cfg) == {} and not is_hogwild(cfg)


def start_in_own_group(args: list[str], cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "nnopt_cli", *args], cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_checkpoints_in_the_parent_and_resumes(tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    # an epoch-level LR schedule in each worker: its state goes into the checkpoint and comes back
    args = ["train", *TINY, *HOGWILD, "epochs=3", "scheduler=exp", "scheduler.gamma=0.5", "hydra.run.dir=run",
            *hold_overrides(flags)]
    proc = start_in_own_group(args, tmp_path)
    wait_until_held(flags, 1, proc)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the workers too: they leave it to the parent
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted by SIGINT" in err
    run = tmp_path / "run"
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == layout.Status.INTERRUPTED and summary["epochs"] == 1
    assert load_checkpoint(run / "checkpoint.pt")["trainer"]["hogwild"]["workers"][1]["optimizer"]["state"]

    release(flags)
    train(compose_cfg(*HOGWILD, "epochs=3", "scheduler=exp", "scheduler.gamma=0.5", *hold_overrides(flags)),
          RunContext(run, resume=True))
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == layout.Status.COMPLETED and summary["resumed_from_epoch"] == 1
    rows = read_metrics(run / layout.METRICS)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["samples_seen"] for r in rows] == [N_TRAIN, 2 * N_TRAIN, 3 * N_TRAIN]
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.025, 0.0125])  # momentum's lr, halved each epoch
    workers = load_checkpoint(run / "checkpoint.pt")["trainer"]["hogwild"]["workers"]
    assert [w["scheduler"]["last_epoch"] for w in workers] == [3, 3]


@pytest.mark.parametrize("overrides,says", [
    (["device=auto"], "trains on the CPU only (shared-memory weights), got device=auto; set device=cpu"),
    (["precision=bf16"], "runs in fp32 only, got precision=bf16"),
    (["optimizer=lbfgs"], "step=closure (torch.optim.LBFGS)"),
    (["optimizer=sam"], "step=backward_closure"),
    (["optimizer=schedulefree_sgd"], "schedule-free"),
    (["optimizer/wrapper=lookahead"], "optimizer wrapper"),
    (["averaging=ema"], "averaging=ema"),
    (["eval_every_steps=5"], "eval_every_steps=null"),
    (["diagnostics=basic"], "diagnostics (nnopt_cli.diagnostics"),
    (["async_sgd.workers=0"], "async_sgd.workers"),
])
def test_hogwild_refusals_say_what_and_how_in_one_line(overrides, says):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*HOGWILD, *overrides))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_hogwild_refuses_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="cannot run under torchrun/DDP"):
        validate(compose_cfg(*HOGWILD))


def test_hogwild_refuses_a_platform_without_a_fork_server(monkeypatch):
    monkeypatch.setattr(torch.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(ConfigError, match="needs the forkserver start method"):
        validate(compose_cfg(*HOGWILD))


def test_epoch_level_observers_are_allowed(tmp_path):
    validate(compose_cfg(*HOGWILD, *hold_overrides(tmp_path)))


@pytest.mark.slow
def test_cli_refusal_is_one_line_before_any_folder(cli, tmp_path):
    out = cli("train", *TINY, *HOGWILD, "precision=bf16", "hydra.run.dir=run")
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "async_sgd='hogwild'" in lines[0] and "precision=fp32" in lines[0], out.stderr
    assert not (tmp_path / "run" / layout.SUMMARY).exists()


def test_a_workers_error_is_named_on_the_first_line_with_its_traceback_below():
    trainer = HogwildTrainer.__new__(HogwildTrainer)
    trainer._outbox = queue.Queue()
    tb = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nValueError: a bad shape\n"
    trainer._outbox.put(("error", 1, tb))
    with pytest.raises(RuntimeError) as e:
        trainer._receive(set())
    first, *rest = str(e.value).splitlines()
    assert first == "hogwild worker 1 failed: ValueError: a bad shape"
    assert "\n".join(rest) == tb.rstrip("\n")
