"""Sweep job folders keyed by what the job is: a sweep grown, shrunk or reordered runs each job once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from nnopt_cli.compare.discover import find_run_dirs
from nnopt_cli.run.job import discard_unused_folder
from nnopt_cli.sweep import job_dirs
from nnopt_cli.sweep.job_dirs import folder_name, identity, job_dir
from nnopt_cli.sweep.report import collect_jobs, format_report, note_job
from nnopt_cli.training.observers import Observer, RunInfo

SMALL = ["dataset=synthetic", "dataset.n_train=128", "dataset.n_test=64", "dataset.val_size=32", "device=cpu",
         "epochs=1", "batch_size.size=64", "threads=1"]


def test_identity_is_the_sorted_normalised_overrides_without_keys_that_change_nothing():
    a = identity(["seed=0", "optimizer=adam", "optimizer.lr=1e-3", "skip_completed=true", "checkpoint.every=0"])
    b = identity(["+optimizer.lr=0.001", "optimizer=adam", "seed=0", "logger=tensorboard"])
    assert a == b == ("optimizer.lr=0.001", "optimizer=adam", "seed=0")
    assert folder_name(a) == "optimizer.lr=0.001,optimizer=adam,seed=0"
    # what the run computes with stays: thread count, device, resume (refused in a sweep)
    assert identity(["seed=0", "threads=2"]) != identity(["seed=0", "threads=1"]) != identity(["seed=0"])
    assert identity(["device=cpu"]) != identity([])
    assert folder_name(identity(["skip_completed=true"])) == "defaults"


@pytest.mark.parametrize("overrides", [
    ["regularizer=[l1,l2]"], ["optimizer/wrapper=lookahead"], ["init_from=/a/run"], ["x='a b'"], ["~seed"],
    [f"seed={n}" for n in range(30)] and ["dataset.name=" + "a" * 120]])
def test_long_or_unsafe_identities_get_a_hashed_folder(overrides):
    name = folder_name(identity(overrides))
    assert name.startswith("job-") and len(name) == 16 and "=" not in name


def test_distinct_identities_never_share_a_folder():
    cases = [["a=1", "b=2"], ["a='1,b=2'"], ["a=1,b=2"], ["a=[1,2]"], ["a=1"], ["a=1.0"], ["a='1'"], ["~a"],
             ["a=null"], ["a@p=1"], ["a/b=1"], ["a.b=1"], []]
    idents = {identity(c) for c in cases if c != ["a=1,b=2"]}  # (that one is a sweep, never a job's override)
    assert len({folder_name(i) for i in idents}) == len(idents)


def old_job(sweep: Path, num: int, overrides: list[str], summary: dict | None = None) -> Path:
    """A job folder of an older nnopt, named by the job's number."""
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_jobs_of_an_old_numbered_sweep_are_found_by_their_recorded_overrides(tmp_path):
    old_job(tmp_path, 0, ["optimizer=sgd", "seed=0"], {"status": "completed"})
    old_job(tmp_path, 1, ["optimizer=adam", "seed=1"], {"status": "failed"})
    old_job(tmp_path, 3, ["seed=1", "optimizer=adam", "skip_completed=true"], {"status": "completed"})  # run twice
    (tmp_path / "2" / ".hydra").mkdir(parents=True)
    (tmp_path / "2" / ".hydra" / "overrides.yaml").write_text("!!python/object:os.system ls\n")  # hostile: ignored
    job_dirs.forget_scans()
    assert job_dir(["seed=0", "optimizer=sgd"], tmp_path) == "0"
    assert job_dir(["optimizer=adam", "seed=1"], tmp_path) == "3"  # the finished one of the two
    assert job_dir(["optimizer=sgd", "seed=2"], tmp_path) == "optimizer=sgd,seed=2"  # new: a named folder


def test_report_never_shows_a_result_from_a_folder_that_records_another_job(tmp_path):
    since = time.time() - 10
    other = old_job(tmp_path, 2, ["optimizer=adam", "seed=0"], {"status": "completed", "test/acc": 0.274})
    note_job(tmp_path, other.name, "skipped", "completed by an earlier run of this sweep", ["optimizer=sgd", "seed=2"])
    mine = old_job(tmp_path, 4, ["optimizer=sgd", "seed=1"], {"status": "completed", "test/acc": 0.5})
    note_job(tmp_path, mine.name, "skipped", "completed by an earlier run of this sweep", ["seed=1", "optimizer=sgd"])
    jobs = {j["job"]: j for j in collect_jobs(tmp_path, since)}
    assert jobs["2"]["status"] == "failed" and jobs["2"]["test/acc"] is None
    assert "holds another experiment" in jobs["2"]["note"]
    assert jobs["4"]["status"] == "skipped" and jobs["4"]["test/acc"] == 0.5
    text = format_report(tmp_path, list(jobs.values()))
    assert "0.2740" not in text and "test/acc=0.5000" in text


def test_a_refused_folder_is_removed_only_when_it_holds_nothing_but_this_jobs_files(tmp_path):
    fresh = tmp_path / "fresh"
    (fresh / ".hydra").mkdir(parents=True)
    for name in ("train.log", ".nnopt.lock", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        (fresh / name).write_text("x")
    assert discard_unused_folder(fresh, "train.log", ".hydra") and not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "train.log").write_text("x")
    (kept / "notes.txt").write_text("mine")
    assert not discard_unused_folder(kept, "train.log", ".hydra")
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt", "train.log"]


class CountStarts(Observer):
    """Counts the runs that really start (a skipped job starts none), in starts.txt of the working dir."""

    def on_run_start(self, run: RunInfo) -> None:
        with open("starts.txt", "a") as f:
            f.write(Path(run.run_dir).name + "\n")


COUNT = "+observers.count._target_=tests.sweep.test_job_dirs.CountStarts"


def sweep(tmp_path: Path, *grid: str) -> dict:
    from nnopt_cli.cli.train import run

    (tmp_path / "starts.txt").write_text("")
    try:
        run(["-m", *SMALL, COUNT, *grid, "hydra.sweep.dir=sw", "skip_completed=true"])
    except SystemExit as e:
        assert e.code in (0, None)
    STARTS[:] = (tmp_path / "starts.txt").read_text().split()
    return json.loads((tmp_path / "sw" / "report.json").read_text())


STARTS: list[str] = []  # the folders of the runs the last sweep started


def test_growing_shrinking_and_reordering_a_sweep_runs_each_job_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep(tmp_path, "optimizer=sgd", "optimizer.lr=0.05", "seed=0,1") and len(STARTS) == 2
    sweep(tmp_path, "optimizer=sgd", "optimizer.lr=0.05", "seed=0,1,2")  # more seeds
    assert len(STARTS) == 1
    report = sweep(tmp_path, "seed=2,1,0", "optimizer.lr=0.1,0.05", "optimizer=sgd")  # another LR, reordered
    assert len(STARTS) == 3
    assert sorted(j["status"] for j in report["jobs"]) == ["completed"] * 3 + ["skipped"] * 3
    sweep(tmp_path, "optimizer=sgd,adam", "optimizer.lr=0.05,0.1", "seed=0,1,2")  # another optimizer
    assert len(STARTS) == 6
    report = sweep(tmp_path, "seed=1", "optimizer=adam", "optimizer.lr=0.1")  # shrunk
    assert STARTS == [] and [j["status"] for j in report["jobs"]] == ["skipped"]
    runs = find_run_dirs(tmp_path / "sw")  # what nnopt compare reads: each config once
    assert len(runs) == 12
    configs = {job_dirs.recorded_identity(r) for r in runs}
    assert len(configs) == 12
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    assert all(s["status"] == "completed" for s in summaries)
    assert len({s["config_sha"] for s in summaries}) == 12


def test_an_old_numbered_sweep_grows_without_running_a_job_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep(tmp_path, "seed=0,1", "hydra.sweep.subdir=${hydra.job.num}")  # the layout of older nnopt versions
    assert sorted(p.name for p in (tmp_path / "sw").iterdir() if not p.name.startswith(".")) == [
        "0", "1", "multirun.yaml", "report.json"]
    report = sweep(tmp_path, "seed=2,1,0")
    assert len(STARTS) == 1
    assert {j["job"]: j["status"] for j in report["jobs"] if j["status"] == "skipped"} == {"0": "skipped",
                                                                                          "1": "skipped"}
    assert len(find_run_dirs(tmp_path / "sw")) == 3


def test_a_refused_config_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    from nnopt_cli.cli.train import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run([*SMALL, "optimizer.lr=-1"])
    assert e.value.code == 2
    assert "invalid config: optimizer.lr=-1" in capsys.readouterr().err
    assert find_run_dirs(tmp_path / "outputs") == []
    with pytest.raises(SystemExit) as e:
        run(["-m", *SMALL, "optimizer.lr=-1,0.1", "hydra.sweep.dir=sw"])
    assert e.value.code == 1
    report = json.loads((tmp_path / "sw" / "report.json").read_text())
    assert sorted((j["status"], j["note"][:40]) for j in report["jobs"]) == [
        ("completed", ""), ("failed", "invalid config: optimizer.lr=-1: a numbe")]
    (run_dir,) = find_run_dirs(tmp_path / "sw")
    assert "optimizer.lr=0.1" in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_tune_lr_folders_name_each_learning_rate_of_a_grid_apart():
    from nnopt_cli.tune.lr_jobs import lr_name

    assert [lr_name(v) for v in (0.001, 3e-4, 0.1)] == ["0.001", "0.0003", "0.1"]
    close = [0.0031622776601683794, 0.0031622776601683795 * (1 + 1e-9)]
    assert len({lr_name(v) for v in close}) == 2  # %g would give both 'lr=0.00316228'
