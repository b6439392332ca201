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


def hparams_run(folder):
    """The run's HParams sub-run: its session and final values."""
    return read_events(folder / tb.HPARAMS_RUN)


SECTIONS = ("step/", "train/", "val/", "counters/", "diag/", "evals/")


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
    # the epoch row at the step the epoch ended, each value under its section; nested diagnostics
    # flattened; None / NaN left out
    assert scalar(acc, "val/acc") == [(5, 0.5)] and scalar(acc, "counters/epoch") == [(5, 1.0)]
    assert scalar(acc, "counters/steps") == [(5, 5.0)] and same(scalar(acc, "train/lr"), [(5, 0.05)])
    assert scalar(acc, "diag/weight_norm") == [(5, 2.5)]
    tags = set(acc.Tags()["scalars"])
    assert tags == {"step/loss", "step/lr", "train/loss", "train/lr", "val/acc", "counters/epoch",
                    "counters/steps", "diag/weight_norm"}
    # the final values are the HParams session's, not one-point charts among the run's curves
    final = hparams_run(tmp_path)
    # summary under compare's names, stage results as <stage>/<metric>, sparsity from nonzeros/params
    assert scalar(final, "test/acc") == [(5, 0.75)] and scalar(final, "run/epochs_run") == [(5, 1.0)]
    assert scalar(final, "best/val/acc") == [(5, 0.5)]
    assert same(scalar(final, "prune/test/acc"), [(5, 0.7)])
    assert same(scalar(final, "prune/sparsity"), [(5, 1 - 5 / 20)])
    assert all(t.startswith(("test/", "best/", "run/", "prune/")) for t in final.Tags()["scalars"])
    assert "run/device" not in final.Tags()["scalars"]
    # HParams: the group choices, the overridden keys and the always-shown ones
    hp = session_hparams(final)
    assert hp == {"optimizer": "sgd", "scheduler": "none", "dataset": "synthetic", "optimizer.lr": 0.05,
                  "dataset.noise": 2.0, "seed": 0.0, "epochs": 2.0}
    end = hp_metadata.parse_session_end_info_plugin_data(
        final.PluginTagToContent("hparams")[hp_metadata.SESSION_END_INFO_TAG])
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


def test_the_hparams_table_lists_the_final_values_as_metrics(tmp_path):
    """What TensorBoard's HParams dashboard shows: one session per run, its settings as hparams, and
    as metrics the final values alone (no curve of the run is a column)."""
    from tensorboard import context as tb_context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    cfg = compose_cfg("logger=tensorboard", "epochs=2")
    for name, lr in (("a", "0.01"), ("b", "0.1")):
        hydra_files(tmp_path / name, {"optimizer": "adam"}, [f"optimizer.lr={lr}"])
        from nnopt_cli.run.recipe import RunContext, train

        train({**cfg, "optimizer": {**cfg["optimizer"], "lr": float(lr)}},
              RunContext(run_dir=tmp_path / name, live_progress=False))
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
    ctx = backend_context.Context(base_plugin.TBContext(logdir=str(tmp_path), data_provider=provider))
    request = tb_context.RequestContext()
    content = ctx.hparams_metadata(request, "")
    experiment = ctx.experiment_from_metadata(request, "", True, content,
                                              ctx.hparams_from_data_provider(request, "", 0))
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert ("", "test/acc") in metrics and ("", "best/val/acc") in metrics
    assert all(tag.startswith(("test/", "best/", "run/")) for _, tag in metrics)  # no train/loss curve
    assert {h.name for h in experiment.hparam_infos} >= {"optimizer", "optimizer.lr", "seed", "epochs"}
    assert sorted(r for r, tags in content.items() if hp_metadata.SESSION_START_INFO_TAG in tags) == \
        ["a/hparams", "b/hparams"]


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
        acc, final = read_events(sweep / job), hparams_run(sweep / job)
        steps = [sum(r["steps"] for r in rows[:i + 1]) for i in range(len(rows))]
        assert same(scalar(acc, "val/loss"), list(zip(steps, [r["val/loss"] for r in rows], strict=True)))
        assert same(scalar(final, "test/acc"), [(steps[-1], summary["test/acc"])])
        assert same(scalar(final, "prune/test/acc"), [(steps[-1], summary["stages"][0]["after"]["test/acc"])])
        hp = session_hparams(final)
        assert hp["optimizer"] == opt and hp["post"] == "prune" and hp["post.prune.finetune_epochs"] == 0
    # a second export leaves the folders alone and says so in one line; --out writes a copy elsewhere
    again = cli("export", "tensorboard", str(sweep))
    assert again.returncode == 0
    assert again.stderr.strip() == "nnopt: 2 run(s) already exported; --force rewrites them"
    assert "for 0 run(s)" in again.stdout
    copy = cli("export", "tensorboard", str(sweep), "--out", str(tmp_path / "tb"))
    assert copy.returncode == 0 and len(list((tmp_path / "tb").glob("*/events.out.tfevents.*"))) == 2
    assert len(list((tmp_path / "tb").glob("*/hparams/events.out.tfevents.*"))) == 2


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
    assert same(scalar(acc, "counters/samples_seen"),
                [(s, r["samples_seen"]) for s, r in zip(ends, rows, strict=True)])
    # every number of the row under a section: none sorts on its own before val/acc
    tags = acc.Tags()["scalars"]
    assert all(t.startswith(SECTIONS) for t in tags), tags
    assert {"train/lr", "train/grad_norm", "train/batch_size", "counters/total_steps", "counters/time_s"} <= set(tags)
    final = hparams_run(tmp_path)
    assert same(scalar(final, "test/acc"), [(15, summary["test/acc"])])
    assert session_hparams(final)["optimizer"] == "adam"


def trained_run(folder, *overrides, choices=None):
    """A run folder as `nnopt train` leaves it (its .hydra/ files included), trained in-process."""
    from nnopt_cli.run.recipe import RunContext, train

    cfg = compose_cfg(*overrides)
    hydra_files(folder, choices or {"optimizer": "adam"}, list(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    train(cfg, RunContext(run_dir=folder, live_progress=False))
    return [json.loads(r) for r in (folder / "metrics.jsonl").read_text().splitlines()]


def export(*args):
    from nnopt_cli.cli import export as export_cli

    export_cli.run(["tensorboard", *map(str, args)])


def test_export_writes_evals_and_force_rewrites_an_earlier_export(tmp_path, capsys):
    # 5 steps an epoch, evaluated every 2 steps and at each epoch's end
    trained_run(tmp_path / "runs" / "a", "eval_every_steps=2")
    evals = [json.loads(r) for r in (tmp_path / "runs" / "a" / "evals.jsonl").read_text().splitlines()]
    export(tmp_path / "runs")
    out = capsys.readouterr()
    assert "for 1 run(s)" in out.out and out.err == ""
    acc = read_events(tmp_path / "runs" / "a")
    assert [s for s, _ in scalar(acc, "evals/val/acc")] == [2, 4, 5, 6, 8, 10]
    assert same(scalar(acc, "evals/val/loss"), [(r["total_steps"], r["val/loss"]) for r in evals])
    assert all(t.startswith(SECTIONS) for t in acc.Tags()["scalars"])
    first = sorted((tmp_path / "runs" / "a").rglob("events.out.tfevents.*"))
    assert len(first) == 2  # the run's curves and its HParams session

    export(tmp_path / "runs")  # exported before: one line, nothing written
    out = capsys.readouterr()
    assert out.err == "nnopt: 1 run(s) already exported; --force rewrites them\n" and "for 0 run(s)" in out.out
    assert sorted((tmp_path / "runs" / "a").rglob("events.out.tfevents.*")) == first

    export(tmp_path / "runs", "--force")  # rewritten: new files in place of the old, the same numbers
    assert "for 1 run(s)" in capsys.readouterr().out
    now = sorted((tmp_path / "runs" / "a").rglob("events.out.tfevents.*"))
    assert len(now) == 2 and not set(now) & set(first)
    again = read_events(tmp_path / "runs" / "a")
    for tag in ("val/acc", "evals/val/acc", "counters/total_steps"):
        assert scalar(again, tag) == scalar(acc, tag)
    assert scalar(hparams_run(tmp_path / "runs" / "a"), "test/acc") == \
        [(10, pytest.approx(json.loads((tmp_path / "runs" / "a" / "summary.json").read_text())["test/acc"]))]


def test_force_never_replaces_the_events_a_run_logged_while_training(tmp_path, capsys):
    trained_run(tmp_path / "live", "logger=tensorboard", "logger.tensorboard.every=1")
    before = {f: f.read_bytes() for f in (tmp_path / "live").rglob("events.out.tfevents.*")}
    export(tmp_path / "live", "--force")
    out = capsys.readouterr()
    assert "live: has the event files logger=tensorboard wrote while it trained, kept (use --out DIR)" in out.err
    assert {f: f.read_bytes() for f in (tmp_path / "live").rglob("events.out.tfevents.*")} == before
    assert len(scalar(read_events(tmp_path / "live"), "step/loss")) == 10  # the per-step loss is still there


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
    export.run(["tensorboard", str(tmp_path / "runs")])  # every run already has its events: up to date, exit 0
    out = capsys.readouterr()
    assert "for 0 run(s)" in out.out
    assert out.err.splitlines() == ["nnopt: 1 run(s) already exported; --force rewrites them"]
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "steps": "many"}\n')  # a run that cannot be exported
    with pytest.raises(SystemExit) as e:
        export.run(["tensorboard", str(tmp_path / "runs"), "--force"])
    out = capsys.readouterr()
    assert e.value.code == 1 and not out.out
    assert out.err.splitlines() == ["nnopt: a: epoch row 1 of metrics.jsonl has steps='many', not a step count; not exported",
                                    "nnopt export: error: nothing exported, see above"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        export.run(["tensorboard", str(tmp_path / "empty")])
    assert e.value.code == 1
    assert capsys.readouterr().err.splitlines() == [f"nnopt: no run folder found under {tmp_path / 'empty'}",
                                                    "nnopt export: error: nothing exported, see above"]
