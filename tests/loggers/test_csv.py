"""logger=csv and several loggers at once: metrics.csv is read back with the csv module and holds
the numbers of metrics.jsonl and summary.json."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from nnopt_cli.loggers.csv import CSVLogger
from nnopt_cli.loggers.tensorboard import TensorBoardLogger
from nnopt_cli.store import layout
from nnopt_cli.training.observers import EpochInfo, RunInfo, build_observers, observer_nodes
from tests.conftest import compose_cfg
from tests.loggers.test_tensorboard import hparams_run, hydra_files, same, scalar


def read_csv(folder):
    with (folder / layout.METRICS_CSV).open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_tensorboard_and_csv_at_once_in_a_real_run(tmp_path):
    from nnopt_cli.run.recipe import RunContext, train

    cfg = compose_cfg("logger=[tensorboard,csv]", "epochs=3")
    assert set(observer_nodes(cfg)) == {"logger.tensorboard", "logger.csv"}
    hydra_files(tmp_path, {"optimizer": "adam"}, ["logger=[tensorboard,csv]"])
    summary = train(cfg, RunContext(run_dir=tmp_path, live_progress=False))
    rows = [json.loads(r) for r in (tmp_path / layout.METRICS).read_text().splitlines()]
    header, got = read_csv(tmp_path)
    assert header[:2] == ["epoch", "step"] and {"train/loss", "val/acc", "lr", "test/acc"} <= set(header)
    epochs, final = got[:-1], got[-1]
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3]
    assert [int(r["step"]) for r in epochs] == [r["total_steps"] for r in rows]
    for r, row in zip(epochs, rows, strict=True):
        assert float(r["val/acc"]) == row["val/acc"] and float(r["train/loss"]) == pytest.approx(row["train/loss"])
        assert r["test/acc"] == ""  # a column of the final row only
    assert final["epoch"] == "" and float(final["test/acc"]) == summary["test/acc"]
    assert same(scalar(hparams_run(tmp_path), "test/acc"), [(15, summary["test/acc"])])  # TensorBoard too


def run_info(tmp_path, resumed_epoch=0):
    model = nn.Linear(4, 3)
    return RunInfo(cfg={}, run_dir=tmp_path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                   train_x=torch.randn(8, 4), train_y=torch.randint(0, 3, (8,)), resumed_epoch=resumed_epoch)


def epoch(n, row):
    return EpochInfo(epoch=n, row={"epoch": n, **row}, model=None, optimizer=None, step=4 * n)


def test_a_later_column_rewrites_the_header_and_a_resume_drops_rows_after_the_checkpoint(tmp_path):
    first = CSVLogger()
    first.on_run_start(run_info(tmp_path))
    first.on_epoch_end(epoch(1, {"val/acc": 0.5}))
    first.on_epoch_end(epoch(2, {"val/acc": 0.6, "diag": {"fc": {"norm": 2.0}}}))  # a new nested column
    first.on_epoch_end(epoch(3, {"val/acc": 0.7}))  # then killed; the checkpoint holds epoch 2
    header, rows = read_csv(tmp_path)
    assert header == ["epoch", "step", "val/acc", "diag/fc/norm"]
    assert [r["diag/fc/norm"] for r in rows] == ["", "2.0", ""]

    second = CSVLogger()
    second.on_run_start(run_info(tmp_path, resumed_epoch=2))
    second.on_epoch_end(epoch(3, {"val/acc": 0.8}))
    header, rows = read_csv(tmp_path)
    assert [(r["epoch"], r["val/acc"]) for r in rows] == [("1", "0.5"), ("2", "0.6"), ("3", "0.8")]
    assert header == ["epoch", "step", "val/acc", "diag/fc/norm"]


def test_a_run_folder_with_the_earlier_single_logger_node_still_builds_it():
    cfg = compose_cfg()
    cfg["logger"] = {"_target_": "nnopt_cli.loggers.tensorboard.TensorBoardLogger", "every": 5, "flush_secs": 10}
    observers = build_observers(cfg)
    assert list(observers.items) == ["logger"] and isinstance(observers.items["logger"], TensorBoardLogger)
    assert observers.items["logger"].every == 5
