"""logger=tensorboard and `nnopt export tensorboard`: the event files are read back with
TensorBoard's own reader (EventAccumulator) and hold the numbers the run produced."""

from __future__ import annotations

import builtins
import json

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata
from torch import nn

from nnopt_cli.errors import NnoptError
from nnopt_cli.loggers import tensorboard as tb
from nnopt_cli.loggers.tensorboard import TensorBoardLogger
from nnopt_cli.training.observers import EpochInfo, RunInfo, StepInfo
from tests.conftest import TINY, compose_cfg


def read_events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalar(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def same(got, expected):
    """(step, value) pairs: the same steps, values equal up to float32 (event files store float32)."""
    return [s for s, _ in got] == [s for s, _ in expected] and [v for _, v in got] == pytest.approx(
        [v for _, v in expected], rel=1e-6)


def session_hparams(acc) -> dict:
    content = acc.PluginTagToContent("hparams")[hp_metadata.SESSION_START_INFO_TAG]
    info = hp_metadata.parse_session_start_info_plugin_data(content)
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def hydra_files(run_dir, choices, overrides):
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def train_steps(logger, model, opt, epoch, first_step, n, x, y):
    """n real SGD steps through the logger's hooks; returns the losses (as the loop computes them)."""
    losses = []
    for s in range(first_step, first_step + n):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        logger.after_step(StepInfo(epoch=epoch, step=s, model=model, optimizer=opt, loss=loss.detach(),
                                   batch_size=len(x)))
    return losses


def test_live_logger_writes_steps_epochs_summary_stages_and_hparams(tmp_path):
    cfg = compose_cfg("logger=tensorboard", "logger.tensorboard.every=2", "optimizer=sgd", "optimizer.lr=0.05", "dataset.noise=2.0")
    hydra_files(tmp_path, {"optimizer": "sgd", "scheduler": "none", "dataset": "synthetic"},
                ["optimizer=sgd", "optimizer.lr=0.05", "dataset.noise=2.0"])
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    logger = TensorBoardLogger(**{k: v for k, v in cfg["logger"]["tensorboard"].items() if k != "_target_"})
    logger.on_run_start(RunInfo(cfg=cfg, run_dir=tmp_path, model=model, optimizer=opt, train_x=x, train_y=y))
    losses = train_steps(logger, model, opt, 1, 1, 5, x, y)
    row = {"epoch": 1, "train/loss": 0.9, "val/acc": 0.5, "lr": 0.05, "grad_norm": None, "steps": 5,
           "diag": {"weight_norm": 2.5, "bad": float("nan")}}
    logger.on_epoch_end(EpochInfo(epoch=1, row=row, model=model, optimizer=opt, step=5))
    summary = {"status": "completed", "test/acc": 0.75, "best/val/acc": 0.5, "epochs": 1, "device": "cpu",
               "stages": [{"name": "prune", "after": {"test/acc": 0.7, "nonzeros": 5, "params": 20}}]}
    logger.on_run_end(summary)
    logger.close()

    acc = read_events(tmp_path)
    # every 2nd step: the loss of exactly that step, and the LR
    assert same(scalar(acc, "step/loss"), [(2, losses[1]), (4, losses[3])])
    assert same(scalar(acc, "step/lr"), [(2, 0.05), (4, 0.05)])
    # the epoch row at the step the epoch ended; nested diagnostics flattened; None / NaN left out
    assert scalar(acc, "val/acc") == [(5, 0.5)] and scalar(acc, "epoch") == [(5, 1.0)]
    assert scalar(acc, "diag/weight_norm") == [(5, 2.5)]
    tags = set(acc.Tags()["scalars"])
    assert "grad_norm" not in tags and "diag/bad" not in tags
    # summary under compare's names, stage results as <stage>/<metric>, sparsity from nonzeros/params
    assert scalar(acc, "test/acc") == [(5, 0.75)] and scalar(acc, "epochs_run") == [(5, 1.0)]
    assert same(scalar(acc, "prune/test/acc"), [(5, 0.7)])
    assert same(scalar(acc, "prune/sparsity"), [(5, 1 - 5 / 20)])
    assert "device" not in tags
    # HParams: the group choices, the overridden keys and the always-shown ones
    hp = session_hparams(acc)
    assert hp == {"optimizer": "sgd", "scheduler": "none", "dataset": "synthetic", "optimizer.lr": 0.05,
                  "dataset.noise": 2.0, "seed": 0.0, "epochs": 2.0}
    end = hp_metadata.parse_session_end_info_plugin_data(
        acc.PluginTagToContent("hparams")[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # api_pb2.STATUS_SUCCESS


def test_resume_drops_events_written_after_the_checkpoint(tmp_path):
    cfg = compose_cfg("logger=tensorboard")
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    run = RunInfo(cfg=cfg, run_dir=tmp_path, model=model, optimizer=opt, train_x=x, train_y=y)
    first = TensorBoardLogger(every=1)
    first.on_run_start(run)
    train_steps(first, model, opt, 1, 1, 4, x, y)
    first.on_epoch_end(EpochInfo(epoch=1, row={"epoch": 1, "val/acc": 0.1}, model=model, optimizer=opt, step=4))
    state = first.state_dict()  # the checkpoint after epoch 1
    train_steps(first, model, opt, 2, 5, 3, x, y)  # killed during epoch 2: steps 5-7 are redone
    first.writer.flush()

    second = TensorBoardLogger(every=1)
    second.load_state_dict(state)
    second.on_run_start(RunInfo(cfg=cfg, run_dir=tmp_path, model=model, optimizer=opt, train_x=x, train_y=y,
                                resumed_epoch=1))
    redone = train_steps(second, model, opt, 2, 5, 4, x, y)
    second.close()
    first.close()
    acc = read_events(tmp_path)
    steps = scalar(acc, "step/loss")
    assert [s for s, _ in steps] == [1, 2, 3, 4, 5, 6, 7, 8]  # no step twice
    assert [v for _, v in steps[4:]] == pytest.approx(redone)
    assert same(scalar(acc, "val/acc"), [(4, 0.1)])


def test_logger_writes_nothing_on_other_ranks(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logger = TensorBoardLogger()
    logger.on_run_start(RunInfo(cfg=compose_cfg(), run_dir=tmp_path, model=model, optimizer=opt,
                                train_x=torch.zeros(1, 2), train_y=torch.zeros(1), write=False))
    logger.after_step(StepInfo(1, 1, model, opt, torch.tensor(1.0), 1))
    logger.on_run_end({"status": "completed"})
    logger.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("every, flush", [(0, 10), (1.5, 10), (None, 0)])
def test_bad_settings_are_one_line(every, flush):
    with pytest.raises(NnoptError, match=r"^invalid config: logger\.tensorboard\.(every|flush_secs)="):
        TensorBoardLogger(every=every, flush_secs=flush)


def test_missing_tensorboard_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kw):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(NnoptError) as e:
        TensorBoardLogger()
    assert str(e.value) == f"logger=tensorboard {tb.INSTALL_HINT}" and "\n" not in str(e.value)
    assert "pip install tensorboard" in str(e.value)


@pytest.mark.slow
def test_export_back_fills_event_files_from_run_folders(cli, tmp_path):
    out = cli("train", "-m", *TINY, "optimizer=sgd,adam", "post=prune", "post.prune.finetune_epochs=0",
              "hydra.sweep.dir=sweep", "hydra.sweep.subdir=${hydra.job.num}")  # job folders 0 (sgd), 1 (adam)
    assert out.returncode == 0, out.stderr[-2000:]
    sweep = tmp_path / "sweep"
    exported = cli("export", "tensorboard", str(sweep))
    assert exported.returncode == 0, exported.stderr
    assert "for 2 run(s)" in exported.stdout
    for job, opt in (("0", "sgd"), ("1", "adam")):
        rows = [json.loads(r) for r in (sweep / job / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((sweep / job / "summary.json").read_text())
        acc = read_events(sweep / job)
        steps = [sum(r["steps"] for r in rows[:i + 1]) for i in range(len(rows))]
        assert same(scalar(acc, "val/loss"), list(zip(steps, [r["val/loss"] for r in rows], strict=True)))
        assert same(scalar(acc, "test/acc"), [(steps[-1], summary["test/acc"])])
        assert same(scalar(acc, "prune/test/acc"), [(steps[-1], summary["stages"][0]["after"]["test/acc"])])
        hp = session_hparams(acc)
        assert hp["optimizer"] == opt and hp["post"] == "prune" and hp["post.prune.finetune_epochs"] == 0
    # a second export leaves the folders alone; --out writes a copy elsewhere
    again = cli("export", "tensorboard", str(sweep))
    assert again.returncode == 1 and "already has TensorBoard event files" in again.stderr and not again.stdout
    assert again.stderr.splitlines()[-1] == "nnopt export: error: nothing exported: every run found (2) was skipped, see above"
    copy = cli("export", "tensorboard", str(sweep), "--out", str(tmp_path / "tb"))
    assert copy.returncode == 0 and len(list((tmp_path / "tb").glob("*/events.out.tfevents.*"))) == 2


def test_logger_in_a_real_run_matches_metrics_and_summary(tmp_path):
    from nnopt_cli.run.recipe import RunContext, train

    # 320 training samples in batches of 64: 5 equal steps an epoch, so an epoch's train/loss is the
    # mean of its step losses
    cfg = compose_cfg("logger=tensorboard", "logger.tensorboard.every=1", "epochs=3")
    hydra_files(tmp_path, {"optimizer": "adam"}, ["logger=tensorboard"])
    summary = train(cfg, RunContext(run_dir=tmp_path, live_progress=False))
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    acc = read_events(tmp_path)
    losses = scalar(acc, "step/loss")
    assert [r["steps"] for r in rows] == [5, 5, 5] and [s for s, _ in losses] == list(range(1, 16))
    for i, row in enumerate(rows):
        assert sum(v for _, v in losses[5 * i:5 * i + 5]) / 5 == pytest.approx(row["train/loss"], rel=1e-5)
    ends = [r["total_steps"] for r in rows]
    assert same(scalar(acc, "val/acc"), [(s, r["val/acc"]) for s, r in zip(ends, rows, strict=True)])
    assert same(scalar(acc, "samples_seen"), [(s, r["samples_seen"]) for s, r in zip(ends, rows, strict=True)])
    assert same(scalar(acc, "test/acc"), [(15, summary["test/acc"])])
    assert session_hparams(acc)["optimizer"] == "adam"


def test_an_export_that_writes_nothing_exits_1_and_says_why(tmp_path, capsys):
    from nnopt_cli.cli import export
    from nnopt_cli.run.recipe import RunContext, train

    run_dir = tmp_path / "runs" / "a"
    cfg = compose_cfg("epochs=1")
    hydra_files(run_dir, {"optimizer": "adam"}, [])
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    train(cfg, RunContext(run_dir=run_dir, live_progress=False))
    export.run(["tensorboard", str(tmp_path / "runs")])
    assert "for 1 run(s)" in capsys.readouterr().out and list(run_dir.glob("events.out.tfevents.*"))
    with pytest.raises(SystemExit) as e:  # every run already has its events
        export.run(["tensorboard", str(tmp_path / "runs")])
    out = capsys.readouterr()
    assert e.value.code == 1 and not out.out
    assert out.err.splitlines() == ["nnopt: a: already has TensorBoard event files, skipped (use --out DIR)",
                                    "nnopt export: error: nothing exported: every run found (1) was skipped, see above"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        export.run(["tensorboard", str(tmp_path / "empty")])
    assert e.value.code == 1
    assert capsys.readouterr().err == f"nnopt export: error: nothing exported: no run folder found under {tmp_path / 'empty'}\n"
