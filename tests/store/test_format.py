"""The run folder's format: statuses, the one summary.json reader, checkpoint formats upgraded in
one place, the metrics rows a checkpoint carries, `_target_` names of earlier releases, and what
checkpoint.keep leaves behind."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nnopt_cli.compare.discover import read_run
from nnopt_cli.errors import ConfigError
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store import checkpoint, layout
from nnopt_cli.store.checkpoint import (
    FORMAT,
    CheckpointError,
    RowsText,
    config_fingerprint,
    decode_rows,
    load_checkpoint,
    make_checkpoint,
    safe_load,
    upgrade,
)
from nnopt_cli.store.folder import RunDir, read_metrics, save_state_dict
from nnopt_cli.store.layout import Status
from nnopt_cli.store.untrusted import former_targets, read_summary, rename_targets, summary_or_reason
from nnopt_cli.sweep.report import SweepFolderError, job_action
from tests.conftest import compose_cfg

OLD_NAMES = {"nnopt_cli.optim.schedulers.wsd": "nnopt_cli.schedulers.wsd",
             "nnopt_cli.optim.schedulers.warmup_cosine": "nnopt_cli.optim.warmup_cosine"}


def as_format_2(ckpt: dict) -> dict:
    """A checkpoint as nnopt wrote it when the metrics rows were a pickled list of dicts (format 2);
    `ckpt` is one load_checkpoint returned (its rows decoded)."""
    return {**ckpt, "format": 2, "metrics": list(ckpt["metrics"])}


def as_format_1(ckpt: dict) -> dict:
    """A checkpoint as nnopt wrote it before the trainer kept counters, observers and averaging,
    and before its modules moved (format 1)."""
    trainer = {k: v for k, v in ckpt["trainer"].items()
               if k not in ("counters", "observers", "averaging", "swa_scheduler", "raw_weights")}
    return {**as_format_2(ckpt), "format": 1, "trainer": trainer, "config": former_targets(ckpt["config"])}


def test_status_is_written_and_printed_as_its_plain_value():
    assert json.dumps({"status": Status.COMPLETED}) == '{"status": "completed"}'
    assert f"{Status.PRUNED:<8}|" == "pruned  |"
    assert Status("diverged") is Status.DIVERGED and Status.COMPLETED == "completed"


def test_one_summary_reader_says_why_it_has_no_summary(tmp_path):
    assert summary_or_reason(tmp_path) == (None, "missing")
    (tmp_path / layout.SUMMARY).write_text("[1, 2]")
    assert summary_or_reason(tmp_path) == (None, "not a JSON object")
    (tmp_path / layout.SUMMARY).write_text('{"status": "completed", ')  # a torn write
    assert read_summary(tmp_path) is None and "truncated" in summary_or_reason(tmp_path)[1]
    (tmp_path / layout.SUMMARY).write_text('{"status": "failed", "n": 1' + "0" * 30 + "}")
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and summary["n"] == 1e30  # a huge integer is a float, not an error
    assert RunDir(tmp_path).status() is Status.FAILED


def test_targets_of_earlier_releases_get_todays_names_and_back():
    old = {"scheduler": {"_target_": "nnopt_cli.schedulers.wsd"},
           "observers": {"mine": {"_target_": "nnopt_cli.observers.Observer"}},
           "post": [{"_target_": "torch.optim.SGD"}]}
    new = rename_targets(old)
    assert new == {"scheduler": {"_target_": "nnopt_cli.optim.schedulers.wsd"},
                   "observers": {"mine": {"_target_": "nnopt_cli.training.observers.Observer"}},
                   "post": [{"_target_": "torch.optim.SGD"}]}
    assert former_targets(new) == old
    assert old["scheduler"]["_target_"] == "nnopt_cli.schedulers.wsd"  # the caller's dict is left alone


def test_upgrade_format_1_rebuilds_counters_and_renames_targets(tmp_path):
    cfg = compose_cfg("scheduler=wsd", "epochs=2")
    train(cfg, RunContext(tmp_path))
    current = load_checkpoint(tmp_path / layout.CHECKPOINT)
    assert current["format"] == FORMAT == 3
    assert read_summary(tmp_path)["format"] == FORMAT
    old = as_format_1(current)
    assert old["config"]["scheduler"]["_target_"] == "nnopt_cli.schedulers.wsd"
    up = upgrade(old, train_samples=cfg["dataset"]["n_train"] - cfg["dataset"]["val_size"])
    assert up["format"] == FORMAT and "counters" not in old["trainer"]  # a new dict
    assert up["config"] == current["config"]
    # rebuilt from the metrics: the same numbers the trainer counted
    assert up["trainer"]["counters"] | {"train_s": 0} == current["trainer"]["counters"] | {"train_s": 0}
    assert up["trainer"]["observers"] == {} and up["trainer"]["raw_weights"] is None
    assert decode_rows(up["metrics"]) == current["metrics"]
    assert upgrade(current) == current  # today's format: nothing to do


# what a row may hold, each kind of value once: NaN and infinities, ints that are not floats, nesting
ODD_ROW = {"epoch": 3, "train/loss": float("nan"), "val/loss": float("inf"), "lr": -float("inf"),
           "grad_norm": 0.1 + 0.2, "tiny": 5e-324, "big": 2 ** 70, "ok": True, "none": None, "name": "é/x",
           "val/class_acc": {"0": 0.5, "1": 1.0}, "list": [1, 2.5, None]}


def test_checkpoint_rows_come_back_exactly_as_they_were(tmp_path):
    cfg = compose_cfg("epochs=1")
    model = torch.nn.Linear(2, 2)

    class Stateless:
        def state_dict(self):
            return {}

    rows = [{"epoch": 1, "train/loss": 0.5}, {**ODD_ROW, "epoch": 2}, ODD_ROW]
    ckpt = make_checkpoint(cfg, model, Stateless(), None, torch.device("cpu"), {"epoch": 3}, rows)
    assert ckpt["format"] == FORMAT and isinstance(ckpt["metrics"], str)  # plain data: one JSON text
    RunDir(tmp_path).save_checkpoint(ckpt)
    raw = torch.load(tmp_path / layout.CHECKPOINT, weights_only=True)
    assert repr(decode_rows(raw["metrics"])) == repr(rows)  # repr: NaN, int against float, order of keys
    assert repr(load_checkpoint(tmp_path / layout.CHECKPOINT)["metrics"]) == repr(rows)
    assert math.isnan(load_checkpoint(tmp_path / layout.CHECKPOINT)["metrics"][1]["train/loss"])


def test_rows_text_encodes_each_row_once(monkeypatch):
    encoded = []
    dumps = json.dumps
    monkeypatch.setattr(checkpoint.json, "dumps", lambda obj, **kw: encoded.append(obj) or dumps(obj, **kw))
    rows, text = [], RowsText()
    for epoch in range(1, 151):
        rows.append({"epoch": epoch, "loss": 1 / epoch})
        assert json.loads(text.text(rows)) == rows
    assert encoded == rows  # 150 checkpoints: each row encoded once, not 150 * 151 / 2 times
    assert json.loads(text.text(rows[:2])) == rows[:2]  # other rows than it was built from: encoded anew


def test_a_format_2_checkpoint_loads_with_its_rows(tmp_path):
    cfg = compose_cfg("epochs=2")
    train(cfg, RunContext(tmp_path))
    current = load_checkpoint(tmp_path / layout.CHECKPOINT)
    old = tmp_path / "old.pt"
    save_state_dict(old, as_format_2(current))
    assert isinstance(torch.load(old, weights_only=True)["metrics"], list)  # as format 2 stored them
    loaded = load_checkpoint(old)
    assert loaded["format"] == FORMAT and loaded["metrics"] == current["metrics"]
    assert loaded["metrics"] == read_metrics(tmp_path / layout.METRICS) and len(loaded["metrics"]) == 2
    assert loaded["trainer"]["counters"] == current["trainer"]["counters"]


@pytest.mark.parametrize("metrics", ["[{\"epoch\": 1", "[1, 2]", "{\"epoch\": 1}", 7])
def test_a_checkpoint_with_unreadable_rows_is_one_clear_error(metrics, tmp_path):
    cfg = compose_cfg("epochs=1")
    train(cfg, RunContext(tmp_path))
    path = tmp_path / layout.CHECKPOINT
    save_state_dict(path, {**torch.load(path, weights_only=True), "metrics": metrics})
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is corrupt: its metrics rows are not a JSON list "
                                              r"of objects"):
        load_checkpoint(path)


def test_latest_and_best_at_once_are_the_same_bytes_and_both_verify(tmp_path):
    run = RunDir(tmp_path)
    run.save_checkpoint({"format": FORMAT, "w": torch.arange(4.0)}, latest=True, best=True)
    run.save_checkpoint({"format": FORMAT, "w": torch.ones(4)}, best=True)  # the best one only
    assert torch.equal(safe_load(run.checkpoint_path)["w"], torch.arange(4.0))
    assert torch.equal(safe_load(run.best_checkpoint_path)["w"], torch.ones(4))
    run.save_checkpoint({"format": FORMAT, "w": torch.zeros(4)}, latest=True, best=True)
    assert run.checkpoint_path.read_bytes() == run.best_checkpoint_path.read_bytes()
    for path in (run.checkpoint_path, run.best_checkpoint_path):
        assert torch.equal(safe_load(path)["w"], torch.zeros(4))  # its checksum verified first


def test_load_checkpoint_refuses_a_format_it_does_not_know(tmp_path):
    path = tmp_path / layout.CHECKPOINT
    save_state_dict(path, {"format": 99, "config": {}})
    with pytest.raises(CheckpointError, match=r"not an nnopt checkpoint of a format this nnopt reads \(1 to 3; "
                                              r"found 99\)"):
        load_checkpoint(path)


def test_skip_completed_recognises_a_folder_written_under_former_target_names(tmp_path):
    cfg = compose_cfg("scheduler=warmup_cosine")
    (tmp_path / layout.SUMMARY).write_text(json.dumps(
        {"status": "completed", "config_sha": config_fingerprint(former_targets(cfg))}))
    assert config_fingerprint(former_targets(cfg)) != config_fingerprint(cfg)
    assert job_action(tmp_path, cfg) == "skip"
    with pytest.raises(SweepFolderError, match="different experiment"):
        job_action(tmp_path, compose_cfg("scheduler=warmup_cosine", "seed=7"))


def test_compare_reads_former_target_names_as_todays(tmp_path):
    import yaml

    (tmp_path / ".hydra").mkdir()
    cfg = compose_cfg("scheduler=wsd")
    (tmp_path / layout.CONFIG).write_text(yaml.safe_dump(former_targets(cfg)))
    (tmp_path / layout.SUMMARY).write_text('{"status": "completed", "format": 2, "test/acc": 0.5}')
    run = read_run(tmp_path, "old")
    assert run.config["scheduler._target_"] == "nnopt_cli.optim.schedulers.wsd"
    assert "format" not in run.metrics()  # a property of the folder, not a measurement


@pytest.mark.parametrize("keep", ["last", "best", "none"])
def test_checkpoint_keep_decides_what_a_completed_run_keeps(keep, tmp_path):
    summary = train(compose_cfg("epochs=3", f"checkpoint.keep={keep}"), RunContext(tmp_path))
    assert summary["status"] == "completed"
    files = {p.name for p in tmp_path.iterdir()}
    kept = {"last": {"checkpoint.pt", "checkpoint.pt.sha256"},
            "best": {"checkpoint.best.pt", "checkpoint.best.pt.sha256"}, "none": set()}[keep]
    assert {f for f in files if f.startswith("checkpoint")} == kept
    assert {"model.pt", "metrics.jsonl", "summary.json"} <= files
    if keep == "best":
        best = load_checkpoint(tmp_path / layout.BEST_CHECKPOINT)
        assert best["epoch"] == summary["best/val/epoch"]
        assert best["progress"]["best_val_acc"] == summary["best/val/acc"]


def test_an_unfinished_run_keeps_its_checkpoint_whatever_keep_says(tmp_path):
    cfg = compose_cfg("epochs=2", "checkpoint.keep=none")
    train(cfg, RunContext(tmp_path))
    run = RunDir(tmp_path)
    save_state_dict(run.checkpoint_path, {"format": FORMAT})  # as a killed run leaves it
    for status in (Status.INTERRUPTED, Status.FAILED, Status.RUNNING, Status.POST_TRAINING):
        run.write_summary({**read_summary(tmp_path), "status": status})
        assert run.remove_unkept_checkpoints("none") == []
        assert run.checkpoint_path.is_file()
    run.write_summary({**read_summary(tmp_path), "status": Status.COMPLETED})
    assert run.remove_unkept_checkpoints("none") == ["checkpoint.pt", "checkpoint.pt.sha256"]
    assert torch.load(tmp_path / "model.pt", weights_only=True)  # the model stays


def test_checkpoint_keep_is_validated_with_the_allowed_values():
    with pytest.raises(ConfigError, match=r"checkpoint.keep.*'all'.*one of last, best, none"):
        validate(compose_cfg("checkpoint.keep=all"))
