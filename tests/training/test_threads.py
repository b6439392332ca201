"""torch's CPU threads: what `threads=null` picks for a given machine and load, the one-line warning
on a busy machine, explicit `threads=N`, and the cores / jobs rule of parallel sweeps."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.training import device
from nnopt_cli.training.device import configure_threads, default_threads, pin_threads
from tests.conftest import compose_cfg


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # a limit of the test machine's would cap the default
    before = torch.get_num_threads()
    yield
    pin_threads(None)
    torch.set_num_threads(before)


def busy_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nnopt" and "threads=1" in r.getMessage()]


@pytest.mark.parametrize("cores, load, expected", [
    (2, 0.0, 2),    # idle: every core
    (2, 0.3, 2),    # a little background work still leaves both
    (2, 0.6, 1),    # more than half a core taken: one thread
    (2, 1.0, 1),
    (2, 10.0, 1),   # however busy, at least one
    (16, 0.2, 16),
    (16, 4.0, 12),  # the cores others leave idle
    (16, 4.6, 11),
    (16, 40.0, 1),
    (8, None, 1),   # load unknown (Windows): the safe choice
])
def test_the_default_takes_the_cores_other_processes_leave_idle(cores, load, expected):
    assert default_threads(cores, load) == expected
    assert configure_threads(None, cores=cores, load=load) == expected
    assert torch.get_num_threads() == expected


@pytest.mark.parametrize("cores, jobs, expected", [(2, 2, 1), (8, 4, 2), (8, 3, 2), (4, 8, 1)])
def test_parallel_jobs_share_the_cores_whatever_the_load(cores, jobs, expected):
    # the sweep's own jobs are part of the load average: they must not shrink each other's share
    for load in (0.0, float(jobs), 50.0):
        assert configure_threads(None, parallel_jobs=jobs, cores=cores, load=load) == expected


def test_explicit_threads_win_over_the_load_and_the_jobs():
    assert configure_threads(2, cores=2, load=9.0) == 2 and torch.get_num_threads() == 2
    assert configure_threads(3, parallel_jobs=2, cores=2, load=0.0) == 3
    assert configure_threads(1, cores=16, load=0.0) == 1


def test_a_resumed_run_keeps_its_recorded_count_on_a_busy_machine():
    pin_threads(2)
    assert configure_threads(None, cores=2, load=9.0) == 2
    pin_threads(None)
    assert configure_threads(None, cores=2, load=9.0) == 1


@pytest.mark.parametrize("threads, cores, load", [(2, 2, 1.8), (4, 4, 3.0), (8, 8, 20.0)])
def test_a_busy_machine_gets_one_warning_line_that_says_what_to_do(caplog, threads, cores, load):
    with caplog.at_level(logging.WARNING, logger="nnopt"):
        configure_threads(threads, cores=cores, load=load)
    [line] = busy_warnings(caplog)
    assert "\n" not in line
    assert f"load average {load:.1f} on {cores} cores" in line and f"uses {threads} threads" in line


@pytest.mark.parametrize("threads, cores, load", [
    (None, 2, 9.0),   # the default on a busy machine: one thread, nothing to warn about
    (None, 2, 0.0),   # the default on an idle machine: every core, and they are idle
    (None, 16, 4.0),
    (1, 2, 30.0),     # one thread cannot stall on another
    (2, 2, 0.4),      # within half a core of slack
    (4, 8, 4.0),
    (2, 2, None),     # load unknown
])
def test_no_warning_when_the_threads_fit_the_idle_cores(caplog, threads, cores, load):
    with caplog.at_level(logging.WARNING, logger="nnopt"):
        configure_threads(threads, cores=cores, load=load)
    assert busy_warnings(caplog) == []


def test_no_warning_for_the_jobs_of_a_parallel_sweep(caplog):
    with caplog.at_level(logging.WARNING, logger="nnopt"):
        assert configure_threads(None, parallel_jobs=2, cores=2, load=2.0) == 1
    assert busy_warnings(caplog) == []


@pytest.mark.parametrize("load, expected", [(0.0, 2), (5.0, 1)])
def test_a_run_records_the_threads_the_default_picked(tmp_path, monkeypatch, load, expected):
    monkeypatch.setattr(device, "available_cores", lambda: 2)
    monkeypatch.setattr(device, "load_average", lambda: load)
    summary = train(compose_cfg("threads=null", "epochs=1"), RunContext(run_dir=tmp_path, live_progress=False))
    assert summary["threads"] == expected
    assert json.loads((tmp_path / "summary.json").read_text())["threads"] == expected


def test_a_run_with_too_many_threads_for_a_busy_machine_warns_before_training(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(device, "available_cores", lambda: 2)
    monkeypatch.setattr(device, "load_average", lambda: 3.0)
    with caplog.at_level(logging.WARNING, logger="nnopt"):
        summary = train(compose_cfg("threads=2", "epochs=1"), RunContext(run_dir=tmp_path, live_progress=False))
    assert summary["threads"] == 2
    [line] = busy_warnings(caplog)
    assert "load average 3.0 on 2 cores" in line and "pass threads=1" in line


@pytest.mark.parametrize("n_jobs, expected", [(2, 2), (1, 1), (-1, "cores")])
def test_a_parallel_sweep_shares_the_cores_among_the_jobs_running_at_once(n_jobs, expected):
    """The launchers set hydra.launcher.n_jobs to the jobs really running at once (one job of a
    `parallel` sweep: 1, so it gets the rule of a run alone); -1 means one per core."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from nnopt_cli.cli.train import parallel_jobs

    hc = OmegaConf.create({"mode": RunMode.MULTIRUN, "launcher": {"n_jobs": n_jobs}})
    jobs = parallel_jobs(hc)
    assert jobs == (device.available_cores() if expected == "cores" else expected)
    assert configure_threads(None, jobs, cores=8, load=8.0) == (8 // jobs if jobs > 1 else 1)
    assert configure_threads(None, jobs, cores=8, load=0.0) == 8 // jobs
    assert parallel_jobs(OmegaConf.create({"mode": RunMode.RUN, "launcher": {}})) == 1


def test_on_a_shared_node_the_load_counts_every_core_of_the_machine():
    # 8 cores of a 64-core node, 50 busy elsewhere on the node: 14 idle, so this job's 8
    assert default_threads(8, 50.0, machine_cores=64) == 8
    assert configure_threads(None, cores=8, load=50.0, machine_cores=64) == 8
    assert configure_threads(None, cores=8, load=60.0, machine_cores=64) == 4


def test_omp_num_threads_caps_the_default_but_not_an_explicit_count(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert configure_threads(None, cores=16, load=0.0) == 3
    assert configure_threads(6, cores=16, load=0.0) == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert configure_threads(None, cores=16, load=0.0) == 16
