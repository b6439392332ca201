"""Sweeps: unique folders, a failing job never stops the others, skip-completed reruns, the report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nnopt_cli.compare.discover import find_run_dirs
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.sweep import report as sweep
from nnopt_cli.sweep.job_dirs import job_dir
from nnopt_cli.sweep.report import SweepFolderError, collect_jobs, format_report, job_action
from tests.conftest import TINY, compose_cfg


def test_run_folders_of_runs_started_at_the_same_instant_differ():
    sweep.register_resolvers()
    pattern = {"dir": "outputs/12-00-00-${nnopt_uid:}", "again": "${dir}"}  # the same time stamp
    a, b = OmegaConf.create(pattern), OmegaConf.create(pattern)
    assert a.dir != b.dir  # the same second, still two folders
    assert a.dir == a.again == a.dir  # one value per config (cached like ${now:})
    assert str(os.getpid()) in a.dir
    assert "${nnopt_uid:}" in (Path(__file__).parents[2] / "conf" / "train.yaml").read_text()


def test_job_action_skips_done_jobs_resumes_cut_ones_and_refuses_foreign_folders(tmp_path):
    cfg = compose_cfg("epochs=1")
    assert job_action(tmp_path / "empty", cfg) == "fresh"
    train(cfg, RunContext(tmp_path / "done"))
    assert job_action(tmp_path / "done", cfg) == "skip"
    assert job_action(tmp_path / "done", {**cfg, "skip_completed": True, "checkpoint": {"every": 5}}) == "skip"
    with pytest.raises(SweepFolderError, match="different experiment"):
        job_action(tmp_path / "done", {**cfg, "seed": 1})
    # killed after its checkpoint: summary still says running
    summary_path = tmp_path / "done" / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "status": "running"}))
    assert job_action(tmp_path / "done", cfg) == "resume"
    with pytest.raises(SweepFolderError, match=r"checkpoint.pt belongs to a different experiment .*seed"):
        job_action(tmp_path / "done", {**cfg, "seed": 1})
    # failed before any checkpoint: run again from scratch
    summary_path.write_text(json.dumps({"status": "failed"}))
    (tmp_path / "done" / "checkpoint.pt").unlink()
    assert job_action(tmp_path / "done", cfg) == "fresh"


def make_job(root: Path, num: int, overrides: list[str], summary: dict | None) -> Path:
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_report_lists_every_job_of_this_sweep_with_its_status(tmp_path):
    old = make_job(tmp_path, 9, ["seed=9"], {"status": "failed"})  # a job of an earlier, larger sweep
    past = time.time() - 100
    os.utime(old / ".hydra" / "overrides.yaml", (past, past))
    done_before = make_job(tmp_path, 0, ["seed=0", "epochs=2"], {"status": "completed", "test/acc": 0.5})
    os.utime(done_before / "summary.json", (past, past))  # finished by an earlier run: skipped now
    make_job(tmp_path, 1, ["seed=1", "epochs=2"], {"status": "completed", "test/acc": 0.75})
    make_job(tmp_path, 2, ["seed=2", "epochs=2"], {"status": "failed", "error": "invalid config: x"})
    make_job(tmp_path, 3, ["seed=3", "epochs=2"], {"status": "running"})
    make_job(tmp_path, 10, ["seed=10", "epochs=2"], None)
    jobs = collect_jobs(tmp_path, since=time.time() - 10)
    assert [(j["job"], j["status"]) for j in jobs] == [
        ("0", "skipped"), ("1", "completed"), ("2", "failed"), ("3", "crashed"), ("10", "failed")]
    text = format_report(tmp_path, jobs)
    assert "5 job(s), 1 completed, 1 crashed, 2 failed, 1 skipped" in text
    assert "test/acc=0.7500" in text and "invalid config: x" in text
    assert "epochs=2" not in text  # overrides every job shares are left out of the lines


def sweep_args(sweep_dir: str) -> list[str]:
    tiny = [o for o in TINY if not o.startswith("epochs")]
    return ["train", "-m", *tiny, "seed=0,1", "epochs=1,0", f"hydra.sweep.dir={sweep_dir}", "skip_completed=true"]


@pytest.mark.slow
def test_failing_job_then_identical_rerun_skips_completed_jobs(cli, tmp_path):
    # epochs=0 is invalid: jobs 1 and 3 fail, jobs 0 and 2 must still run and be reported
    first = cli(*sweep_args("sw"))
    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stderr and "2 of 4 sweep job(s) failed" in first.stderr
    assert "4 job(s), 2 completed, 2 failed" in first.stdout
    report = json.loads((tmp_path / "sw" / "report.json").read_text())
    assert sorted(j["status"] for j in report["jobs"]) == ["completed", "completed", "failed", "failed"]
    sw = tmp_path / "sw"
    job = {seed: sw / job_dir([*sweep_args("sw")[2:-4], f"seed={seed}", "epochs=1"], sw) for seed in (0, 1)}
    for d in job.values():
        assert json.loads((d / "summary.json").read_text())["status"] == "completed"
    assert len(find_run_dirs(sw)) == 2  # the refused jobs (epochs=0) left no folder
    model_0 = (job[0] / "model.pt").stat().st_mtime_ns
    # seed 1 "was killed" after its last checkpoint: the rerun resumes it instead of starting over
    s1 = json.loads((job[1] / "summary.json").read_text())
    (job[1] / "summary.json").write_text(json.dumps({**s1, "status": "running"}))

    second = cli(*sweep_args("sw"))
    assert second.returncode == 1, second.stderr
    report = json.loads((sw / "report.json").read_text())
    assert {j["job"]: j["status"] for j in report["jobs"] if j["status"] != "failed"} == {
        job[0].name: "skipped", job[1].name: "completed"}
    assert (job[0] / "model.pt").stat().st_mtime_ns == model_0  # not retrained
    assert json.loads((job[1] / "summary.json").read_text())["resumed_from_epoch"] == 1
