"""Progress output: each epoch line ends with the run's ETA, a sweep job says which job of how many it
is and when the sweep should end, lines of parallel jobs are whole and prefixed by their job, and
lr-find / landscape count their work. Progress never reaches the run's files."""

from __future__ import annotations

import argparse
import logging
import re
import time

import pytest

from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.sweep.progress import sweep_eta
from nnopt_cli.training.progress import Count, Progress, duration
from tests.conftest import TINY, compose_cfg

EPOCH_LINE = re.compile(r"^(\[job (\d+)/(\d+) ([^\]]*)\] )?train epoch (\d+)/(\d+) .* eta=(\d+(?:m\d\ds)?s)$")


def epoch_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nnopt" and " epoch " in r.getMessage()]


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (59.4, "59s"), (65, "1m05s"), (3600 * 2 + 7 * 60 + 3, "2h07m")])
def test_durations_read_short(seconds, text):
    assert duration(seconds) == text


def test_each_epoch_line_ends_with_the_runs_eta_and_nothing_reaches_the_run_files(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="nnopt"):
        train(compose_cfg("epochs=3"), RunContext(run_dir=tmp_path, live_progress=False,
                                                  progress_prefix="[job 2/5 seed=1]"))
    lines = epoch_messages(caplog)
    assert len(lines) == 3  # one line an epoch, none per step
    for epoch, line in enumerate(lines, 1):
        m = EPOCH_LINE.match(line)
        assert m, line
        assert m.group(2, 3, 4) == ("2", "5", "seed=1") and int(m.group(5)) == epoch and m.group(6) == "3"
    assert lines[-1].endswith(" eta=0s")  # nothing left after the last epoch
    for name in ("metrics.jsonl", "summary.json"):
        assert "eta" not in (tmp_path / name).read_text()


def test_the_eta_is_epochs_left_times_the_mean_measured_epoch(caplog, monkeypatch):
    """Epochs of 2 s and 2.5 s on the progress' clock: after epoch 1 of 10, 9 x 2 s are left; after
    epoch 2, 8 x 2.25 s."""
    clock = iter([0.0, 2.0, 2.0, 4.5])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    progress = Progress(10, live=False)
    with caplog.at_level(logging.INFO, logger="nnopt"):
        progress.start_epoch(1, 5)
        progress.end_epoch({"epoch": 1, "val/loss": 1.0, "val/acc": 0.5})
        assert progress.eta_s(1) == pytest.approx(18.0)
        progress.start_epoch(2, 5)
        progress.end_epoch({"epoch": 2, "val/loss": 1.0, "val/acc": 0.5})
    assert progress.eta_s(2) == pytest.approx(8 * (2.0 + 2.5) / 2)
    assert [m.rsplit(" ", 1)[1] for m in epoch_messages(caplog)] == ["eta=18s", "eta=18s"]


def test_the_live_bar_shows_the_runs_eta(capsys):
    with Progress(2, live=True) as progress:
        for epoch in (1, 2):
            progress.start_epoch(epoch, 4)
            progress.update(2, 0.5, 0.9, 0.1)
            progress.end_epoch({"epoch": epoch, "val/loss": 0.4, "val/acc": 0.95})
    text = capsys.readouterr().out
    assert "train epoch 2/2" in text and "run eta 0s" in text and "val/acc 0.9500" in text


def test_sweep_eta_is_the_mean_job_time_times_the_rounds_left():
    # 8 jobs, 2 done in 30 s and 34 s, 2 at once: 6 left = 3 rounds of 32 s
    assert sweep_eta(8, 2, 2, 30.0 + 34.0, 2) == "sweep eta 1m36s (2 of 8 jobs done, 32s each, 2 at once)"
    # a job refused at once counts as done, but its time is no measure of the others'
    assert sweep_eta(8, 3, 2, 64.0, 1) == "sweep eta 2m40s (3 of 8 jobs done, 32s each)"
    assert sweep_eta(3, 0, 0, 0.0, 1) == "sweep eta after the first job ends (0 of 3 jobs done)"
    assert sweep_eta(None, 1, 1, 10.0, 1) == "1 job(s) done, 10s each"


def test_jobs_finishing_at_once_all_reach_the_totals(tmp_path):
    """Forked jobs add to the totals at the same moment: every one of them is counted."""
    import multiprocessing

    from nnopt_cli.sweep.progress import add_finished, finished_times

    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=add_finished, args=(tmp_path, 2.0, i % 4 != 0)) for i in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert finished_times(tmp_path) == (12, 9, 18.0)


def test_a_count_writes_a_line_at_each_tenth_not_each_step(capsys):
    with Count(40, "nnopt lr-find", "steps", live=False) as count:
        for _ in range(40):
            count.advance()
    lines = capsys.readouterr().err.splitlines()
    assert [int(re.match(r"nnopt lr-find: (\d+)/40 steps", ln).group(1)) for ln in lines] == list(range(4, 41, 4))
    assert all(", eta " in ln for ln in lines[:-1]) and lines[-1] == "nnopt lr-find: 40/40 steps"


def test_lr_find_counts_its_steps_on_stderr(tmp_path, capsys):
    from nnopt_cli.cli import lr_find

    args = argparse.Namespace(overrides=[*TINY, "optimizer=sgd"], start_lr=1e-6, end_lr=1e-4, steps=20,
                              stop_factor=4.0, out=tmp_path / "lrf")
    result = lr_find.lr_find(args)
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("nnopt lr-find: ")]
    assert len(result["test"].lrs) == 20
    assert [ln.split()[2] for ln in lines] == [f"{n}/20" for n in range(2, 21, 2)]
    assert "/20 steps" not in captured.out  # the results stay alone on stdout


def test_landscape_counts_its_points_on_stderr(tmp_path, capsys):
    from nnopt_cli.cli import landscape
    from tests.diagnostics.test_lr_find_and_landscape import landscape_args, make_run

    make_run(tmp_path / "a")
    capsys.readouterr()
    doc = landscape.landscape(landscape_args(tmp_path / "a", tmp_path, points=5, grid=3))
    total = len(doc["line"]["rows"]) + 9
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("nnopt landscape: ")]
    assert lines and lines[-1] == f"nnopt landscape: {total}/{total} points"
    assert len(lines) <= 10


@pytest.mark.slow
def test_parallel_sweep_lines_are_whole_and_prefixed_by_their_job(cli, tmp_path):
    out = cli("train", "-m", *TINY, "epochs=3", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
              "optimizer=sgd,adam", "hydra.sweep.dir=sweep")
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    starts = re.findall(r"- job (\d)/2 (optimizer=\w+): (sweep eta [^\n]*)$", text, re.M)
    assert sorted((k, o) for k, o, _ in starts) == [("1", "optimizer=sgd"), ("2", "optimizer=adam")]
    epoch_lines = [ln for ln in text.splitlines() if " train epoch " in ln]
    assert len(epoch_lines) == 6
    seen = set()
    for ln in epoch_lines:  # each line whole: one log header, one job prefix, one eta at its end
        assert ln.count("[nnopt][INFO]") == 1, ln
        m = EPOCH_LINE.match(ln.split("[nnopt][INFO] - ", 1)[1])
        assert m and m.group(3) == "2" and m.group(6) == "3", ln
        assert {"1": "optimizer=sgd", "2": "optimizer=adam"}[m.group(2)] == m.group(4)
        seen.add((m.group(4), m.group(5)))
    assert len(seen) == 6
    metrics = list((tmp_path / "sweep").glob("*/metrics.jsonl"))
    assert len(metrics) == 2 and not any("eta" in f.read_text() for f in metrics)


@pytest.mark.slow
def test_skip_completed_counts_only_the_jobs_that_run(cli, tmp_path):
    first = cli("train", "-m", *TINY, "epochs=1", "seed=0", "hydra.sweep.dir=sweep")
    assert first.returncode == 0, first.stderr[-2000:]
    again = cli("train", "-m", *TINY, "epochs=1", "seed=0,1,2", "hydra.sweep.dir=sweep", "skip_completed=true")
    assert again.returncode == 0, again.stderr[-2000:]
    text = again.stdout + again.stderr
    starts = re.findall(r"- (job \d/\d seed=\d): ([^\n]*)$", text, re.M)
    assert [s for s, _ in starts] == ["job 1/2 seed=1", "job 2/2 seed=2"]
    assert starts[0][1] == "sweep eta after the first job ends (0 of 2 jobs done)"
    assert re.fullmatch(r"sweep eta \d+s \(1 of 2 jobs done, \d+s each\)", starts[1][1])
    assert re.search(r"\[job 2/2 seed=2\] train epoch 1/1 .* eta=0s$", text, re.M)
