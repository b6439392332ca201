"""The real `nnopt` command in subprocesses: help, config printing, runs, sweeps, errors."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY

pytestmark = pytest.mark.slow  # every test here starts the real command in a subprocess


def run_folders(root):
    return sorted(p.parent for p in root.rglob("summary.json"))


def test_top_level_help_and_unknown_command(cli):
    out = cli("--help")
    assert out.returncode == 0 and "train" in out.stdout
    bad = cli("trian")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown command 'trian'" in bad.stderr


def test_train_help_lists_groups_and_options(cli):
    out = cli("train", "--help")
    assert out.returncode == 0
    for text in ("optimizer:", "adam, adamw", "scheduler:", "warmup_cosine", "batch_size:", "regularizer:"):
        assert text in out.stdout, text


def test_cfg_job_prints_the_composed_config(cli):
    out = cli("train", "--cfg", "job", "optimizer=rmsprop")
    assert out.returncode == 0 and "_target_: torch.optim.RMSprop" in out.stdout


def test_train_writes_a_run_folder_and_prints_test_accuracy(cli, tmp_path):
    out = cli("train", *TINY)
    assert out.returncode == 0, out.stderr
    assert "test/acc=" in out.stdout + out.stderr
    (folder,) = run_folders(tmp_path / "outputs")
    assert {".hydra", "metrics.jsonl", "summary.json", "model.pt", "train.log"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("override,key", [("optimizer.lr=-1", "optimizer.lr"), ("model.hidden=[0]", "model.hidden"),
                                          ("precision=fp16", "precision"), ("device=cuda:3", "device")])
def test_bad_value_is_one_line_and_nonzero(cli, tmp_path, override, key):
    out = cli("train", *TINY, override)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"nnopt: error: invalid config: {key}=")
    # refused before training: no run folder that a later `nnopt compare` would read
    assert [f for f in (tmp_path / "outputs").rglob("*") if f.is_file()] == []


def test_unknown_group_option_lists_valid_ones(cli):
    out = cli("train", *TINY, "optimizer=adamm")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    # one line (checked before Hydra runs) instead of Hydra's multi-line "Could not find" report
    assert "optimizer='adamm': one of" in out.stderr and "rmsprop" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_multirun_sweeps_every_combination(cli, tmp_path):
    out = cli("train", "--multirun", *TINY, "epochs=1", "optimizer=sgd,adam", "seed=0,1")
    assert out.returncode == 0, out.stderr
    folders = run_folders(tmp_path / "outputs" / "multirun")
    assert len(folders) == 4
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    assert all(s["status"] == "completed" for s in summaries)


@pytest.mark.parametrize("launcher", ["joblib", "parallel"])
def test_parallel_launchers_run_jobs_at_once_without_oversubscribing(cli, tmp_path, launcher):
    overrides = [o for o in TINY if not o.startswith("threads=")]  # let nnopt pick the thread count
    out = cli("train", "--multirun", f"hydra/launcher={launcher}", "hydra.launcher.n_jobs=2", *overrides, "epochs=1",
              "optimizer=sgd,adam")
    assert out.returncode == 0, out.stderr
    summaries = [json.loads((f / "summary.json").read_text()) for f in run_folders(tmp_path / "outputs")]
    assert len(summaries) == 2 and all(s["status"] == "completed" for s in summaries)
    import os

    cores = len(os.sched_getaffinity(0))
    assert all(s["threads"] * 2 <= max(cores, 2) for s in summaries)


@pytest.mark.parametrize("override,key,known", [("optimizer.lrr=0.1", "optimizer.lrr", "lr"), ("foo=1", "foo", "epochs")])
def test_unknown_key_is_one_line_naming_the_keys_that_exist(cli, tmp_path, override, key, known):
    out = cli("train", *TINY, override)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert out.stderr.startswith(f"nnopt: error: invalid config: {key}=") and f" {known}," in out.stderr
    if "." in key:  # how to add a key on purpose: only inside a _target_ node (elsewhere nnopt refuses +key)
        assert f"+{override}" in out.stderr
    assert not (tmp_path / "outputs").exists()  # stopped before Hydra made a run folder
