"""Fast sweeps keep their guarantees: jobs stay independent, seeds give a separate run's numbers bit
for bit, and `hydra/launcher=parallel` stops cleanly on a signal and resumes with skip_completed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nnopt_cli.sweep.job_dirs import job_dir
from nnopt_cli.training.observers import Observer, RunInfo
from tests.conftest import REPO, TINY, run_cli
from tests.hold import hold_overrides, release, wait_until_held


class CorruptAtEnd(Observer):
    """A badly behaved job: at its end it overwrites the training data and its config in place,
    everything a later job of the same process could be handed."""

    def on_run_start(self, run: RunInfo) -> None:
        self.run = run

    def on_run_end(self, *args, **kwargs) -> None:
        self.run.train_x.fill_(float("nan"))
        self.run.train_y.zero_()
        self.run.cfg["optimizer"]["lr"] = 123.0
        self.run.cfg["dataset"]["name"] = "broken"


def job(sweep: Path, *overrides: str) -> Path:
    """The folder of the sweep job with these task overrides."""
    return sweep / job_dir(list(overrides), sweep)


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_jobs_cannot_touch_each_others_data_and_match_separate_runs(tmp_path, launcher):
    bad = "+observers.bad._target_=tests.sweep.test_parallel_sweeps.CorruptAtEnd"
    extra = [] if launcher == "basic" else ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
    out = run_cli("train", "-m", *extra, *TINY, bad, "seed=0,1,2", "hydra.sweep.dir=sw", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for seed in range(3):  # each job as if it ran alone, though the jobs before it wrecked their data
        alone = run_cli("train", *TINY, bad, f"seed={seed}", f"hydra.run.dir=alone{seed}", cwd=tmp_path)
        assert alone.returncode == 0, alone.stderr
        folder = job(tmp_path / "sw", *TINY, bad, f"seed={seed}")
        assert metrics(folder) == metrics(tmp_path / f"alone{seed}")
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["threads"] == 1


@pytest.mark.slow
def test_parallel_jobs_run_at_once_in_forked_workers_one_thread_each(tmp_path):
    overrides = [o for o in TINY if not o.startswith("threads=")]  # nnopt picks: cores / jobs
    out = run_cli("train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *overrides, "seed=0,1,2,3",
                  "hydra.sweep.dir=sw", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "in 2 forked worker processes" in out.stdout + out.stderr
    folders = [job(tmp_path / "sw", *overrides, f"seed={i}") for i in range(4)]
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    assert all(s["status"] == "completed" for s in summaries)
    cores = len(os.sched_getaffinity(0))
    assert all(s["threads"] == max(1, cores // 2) for s in summaries)
    # the same seed alone, with the same thread count: the same numbers
    alone = run_cli("train", *overrides, "seed=3", f"threads={summaries[3]['threads']}", "hydra.run.dir=alone",
                    cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert metrics(folders[3]) == metrics(tmp_path / "alone")
    # one job: one worker, whose threads follow the rule of a run alone (the idle cores), as in the
    # sequential sweep, not cores / n_jobs
    one = run_cli("train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *overrides, "seed=7",
                  "hydra.sweep.dir=one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    seq = run_cli("train", "-m", *overrides, "seed=7", "hydra.sweep.dir=seq", cwd=tmp_path)
    assert seq.returncode == 0, seq.stderr
    assert "Launching 1 jobs in 1 forked worker processes" in one.stdout + one.stderr
    # the lone job's config says one job runs at once, so it takes the threads of a run alone (the
    # idle cores at its start: the load may differ between the two starts, so the counts may too)
    hydra_cfg = yaml.safe_load((job(tmp_path / "one", *overrides, "seed=7") / ".hydra" / "hydra.yaml").read_text())
    assert hydra_cfg["hydra"]["launcher"]["n_jobs"] == 1
    threads = [json.loads((job(tmp_path / d, *overrides, "seed=7") / "summary.json").read_text())["threads"]
               for d in ("one", "seq")]
    assert all(1 <= t <= cores for t in threads)


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [False, True], ids=["kill-pid", "ctrl-c-group"])
def test_a_signalled_parallel_sweep_checkpoints_running_jobs_starts_no_more_and_resumes(tmp_path, to_group):
    flags = tmp_path / "flags"
    flags.mkdir()
    overrides = [*[o for o in TINY if not o.startswith("epochs=")], "epochs=3", *hold_overrides(flags)]
    cmd = [sys.executable, "-m", "nnopt_cli", "train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
           *overrides, "seed=0,1,2", "hydra.sweep.dir=sw"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    folders = [job(tmp_path / "sw", *overrides, f"seed={i}") for i in range(3)]
    # the two running jobs are held at the end of their first epoch; the third is queued
    assert wait_until_held(flags, 2, proc) == sorted(f.name for f in folders[:2])
    if to_group:  # what a terminal's Ctrl-C does: every process of the sweep gets SIGINT
        os.killpg(proc.pid, signal.SIGINT)
    else:  # `kill <pid>`: only the sweep's process; it passes the stop on to the running jobs
        proc.send_signal(signal.SIGTERM)
    # each held job goes on once the stop reaches it (a kill of the sweep's pid reaches the jobs
    # through the launcher), and stops at its next step with a checkpoint
    assert wait_until_held(flags, 2, proc, what="stopped") == sorted(f.name for f in folders[:2])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    for i in (0, 1):
        summary = json.loads((folders[i] / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["epochs"] == 1
        assert (folders[i] / "checkpoint.pt").is_file()
    assert not folders[2].exists()  # queued, never started
    release(flags)
    again = subprocess.run([*cmd, "skip_completed=true"], cwd=tmp_path, env=env, text=True, capture_output=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    for i in range(3):
        summary = json.loads((folders[i] / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["epochs"] == 3
        assert len(metrics(folders[i])) == 3


def test_a_worker_returns_what_pickle_can_send():
    """The job's configs hold classes Hydra re-created in the worker; only status and value go back."""
    import pickle

    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.nnopt_launcher import fork_launcher

    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    assert fork_launcher.workers(-1, 1) == 1 and fork_launcher.workers(8, 3) == 3 and fork_launcher.workers(2, 9) == 2
    ret = fork_launcher.sendable(JobReturn(overrides=["seed=1"], status=JobStatus.FAILED,
                                           _return_value=Unpicklable("boom")))
    back = pickle.loads(pickle.dumps(ret))
    with pytest.raises(RuntimeError, match="Unpicklable: boom"):
        _ = back.return_value
