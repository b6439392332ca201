"""Hostile input to the commands other than `nnopt train`'s training loop: no hang, no silent
wrong result, and a full disk (RLIMIT_FSIZE: a write past it fails with EFBIG, as one past a full
disk fails with ENOSPC) is one line with nothing half-written and nothing counted."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.store.folder import RunDirError
from nnopt_cli.tune.pruning import JOURNAL, journal_storage
from tests.conftest import REPO, TINY

LR = {"optimizer.lr": optuna.distributions.FloatDistribution(0.01, 0.1)}


def _limit_file_size(limit: int):
    def limit_in_child():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_in_child


def nnopt(*args: str, cwd: Path, limit: int | None = None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NNOPT_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "nnopt_cli", *args], cwd=cwd, env=env, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=300,
                          preexec_fn=_limit_file_size(limit) if limit else None)


def one_line(proc: subprocess.CompletedProcess, *, code: int = 1) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == code and "Traceback" not in err, err
    return err.splitlines()[-1]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """One tiny completed run (model.pt, model.init.pt, metrics.jsonl, summary.json)."""
    base = tmp_path_factory.mktemp("runs")
    proc = nnopt("train", *TINY, "hydra.run.dir=run", cwd=base)
    assert proc.returncode == 0, proc.stderr
    return base / "run"


# ---------------------------------------------------------------------------- nnopt tune


def preset(folder: Path, n_trials: int, **settings) -> Path:
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump({"tune": {"params": {"optimizer.lr": "interval(0.01, 0.1)"}, "n_trials": n_trials,
                                             "dir": "st", **settings}}))
    return path


def load(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=journal_storage(folder / "st" / JOURNAL))


def tune_cli(tmp_path, capsys, *args) -> tuple[int, str]:
    import logging

    from nnopt_cli.cli.tune import run

    logging.getLogger("nnopt").handlers.clear()  # run() adds one on this test's stderr
    with pytest.raises(SystemExit) as e:
        run(["hparams_search=s.yaml", *args, *TINY])
    return e.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("kind", ["fifo", "corrupt"])
def test_a_dead_trial_with_a_fifo_or_corrupt_summary_is_requeued_without_a_hang(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.chdir(tmp_path)
    preset(tmp_path, 1)
    assert tune_cli(tmp_path, capsys)[0] == 0
    dead = load(tmp_path).ask(LR)  # RUNNING, and no process holds its lock: its process died
    run_dir = tmp_path / "st" / str(dead.number)
    run_dir.mkdir()
    if kind == "fifo":  # read with no guard, it blocked the study lock's holder, and every process with it
        os.mkfifo(run_dir / "summary.json")
    else:
        (run_dir / "summary.json").write_text('{"status": "compl')
    code, err = tune_cli(tmp_path, capsys, "tune.n_trials=2")
    assert code == 0 and "Traceback" not in err
    assert f"trial {dead.number}: the process running trial {dead.number} died; queued again" in err
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[2].params == study.trials[1].params  # the dead trial's point, redone
    summary = json.loads((run_dir / "summary.json").read_text())  # now a regular file saying what happened
    assert summary["status"] == "failed" and "queued again" in summary["error"]


def test_a_corrupt_journal_or_study_attribute_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    preset(tmp_path, 1)
    assert tune_cli(tmp_path, capsys)[0] == 0
    journal = tmp_path / "st" / JOURNAL
    good = journal.read_bytes()
    journal.write_bytes(good + b"not json\n" + good.splitlines(keepends=True)[-1])
    code, err = tune_cli(tmp_path, capsys, "tune.n_trials=2")
    assert code == 2 and "\n" not in err
    assert err.startswith(f"nnopt: error: st/{JOURNAL} line ") and "is not JSON" in err
    journal.write_bytes(good + b'{"op_code": 99}\n')  # JSON, but not a record Optuna can replay
    code, err = tune_cli(tmp_path, capsys, "tune.n_trials=2")
    assert code == 2 and "\n" not in err and "cannot be replayed" in err, err
    journal.write_bytes(good)
    load(tmp_path).set_user_attr("nnopt", [1, 2])
    code, err = tune_cli(tmp_path, capsys, "tune.n_trials=2")
    assert code == 2 and err == ("nnopt: error: the study in st has a malformed 'nnopt' attribute (a list, not a "
                                 "mapping); it was not made by nnopt tune: use another tune.dir")
    assert len(load(tmp_path).trials) == 1  # nothing ran


def test_a_journal_record_cut_by_a_full_disk_is_dropped_and_the_study_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    preset(tmp_path, 1)
    assert tune_cli(tmp_path, capsys)[0] == 0
    journal = tmp_path / "st" / JOURNAL
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code":4,"worker_id":"x","study_id":0,"datetime_sta')  # the append cut short
    code, err = tune_cli(tmp_path, capsys, "tune.n_trials=2")
    assert code == 0 and f"st/{JOURNAL} ended in a record cut short (a full disk?); removed it (55 bytes)" in err
    assert [t.state for t in load(tmp_path).trials] == [TrialState.COMPLETE] * 2


def test_the_direction_is_fixed_when_the_study_is_made(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    preset(tmp_path, 1, direction="maximize")
    assert tune_cli(tmp_path, capsys)[0] == 0
    code, err = tune_cli(tmp_path, capsys, "tune.n_trials=2", "tune.direction=minimize")
    assert code == 2 and err == ("nnopt: error: invalid config: tune.direction='minimize': the study in st was made "
                                 "to maximize best/val/acc; rerun it as it was made, or use another tune.dir")
    code, err = tune_cli(tmp_path, capsys, "tune.n_trials=2", "tune.objective=test/loss")
    assert code == 2 and "was made with another objective" in err
    study = load(tmp_path)
    assert len(study.trials) == 1 and study.direction.name == "MAXIMIZE" and study.metric_names == ["best/val/acc"]


def test_a_sampler_seed_that_is_not_a_number_is_one_line_before_the_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    preset(tmp_path, 1)
    code, err = tune_cli(tmp_path, capsys, "tune.sampler.seed=abc")
    assert code == 2 and err == "nnopt: error: invalid config: tune.sampler.seed='abc': an integer in [0, 2147483647]"
    assert not (tmp_path / "st").exists()


@pytest.mark.slow
def test_an_out_of_space_trial_is_not_counted_and_a_rerun_continues_the_study(tmp_path):
    preset(tmp_path, 2)
    # 100 kB: the journal and the configs fit, the first model file does not
    err = one_line(nnopt("tune", "hparams_search=s.yaml", *TINY, cwd=tmp_path, limit=100_000))
    assert err.startswith("nnopt: error: trial 0: cannot write st/0/model.init.pt: File too large; the trial was "
                          "not counted"), err
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]  # requeued, not counted
    assert "error" not in study.trials[0].user_attrs
    proc = nnopt("tune", "hparams_search=s.yaml", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    states = [t.state for t in load(tmp_path).trials]
    assert states.count(TrialState.COMPLETE) == 2 and "(1 cut short and redone)" in proc.stdout


# ---------------------------------------------------------------------------- compare, export, lr-find, landscape


@pytest.mark.slow
def test_compare_on_a_full_disk_is_one_line(run_folder, tmp_path):
    err = one_line(nnopt("compare", str(run_folder), "--plot", "p.png", cwd=tmp_path, limit=2000))
    assert err == "nnopt compare: error: cannot write p.png: File too large"
    assert os.listdir(tmp_path) == []  # no half a PNG, no temporary file
    for fmt in ("table", "csv"):
        with open(tmp_path / "out.txt", "w") as out:  # `nnopt compare > out.txt`
            proc = nnopt("compare", str(run_folder), "--format", fmt, cwd=tmp_path, limit=100, stdout=out)
        assert one_line(proc) == "nnopt compare: error: cannot write the output: File too large"
    with open(tmp_path / "out.txt", "w") as out:
        assert nnopt("compare", str(run_folder), "--format", "csv", cwd=tmp_path, stdout=out).returncode == 0
    assert (tmp_path / "out.txt").read_text().startswith("run,")


@pytest.mark.slow
@pytest.mark.parametrize("limit", [60, 1000])  # at the first write; part way through the epochs
def test_export_on_a_full_disk_is_one_line_and_removes_its_event_file(run_folder, tmp_path, limit):
    err = one_line(nnopt("export", "tensorboard", str(run_folder), "--out", "tb", cwd=tmp_path, limit=limit))
    assert err == ("nnopt export: error: cannot write TensorBoard events in tb/run: File too large; "
                   "0 run(s) exported before it")
    assert os.listdir(tmp_path / "tb" / "run") == []


@pytest.mark.slow
def test_lr_find_and_landscape_on_a_full_disk_are_one_line_and_write_nothing(run_folder, tmp_path):
    err = one_line(nnopt("lr-find", *TINY, "--steps", "20", "--out", "lr", cwd=tmp_path, limit=3000))
    assert err.startswith("nnopt lr-find: error: cannot write lr/lr_find.") and err.endswith("File too large")
    assert os.listdir(tmp_path / "lr") == []  # all or none: the files written before the failure are removed
    err = one_line(nnopt("landscape", str(run_folder), "--points", "3", "--grid", "0", "--samples", "64",
                         "--out", "ls", cwd=tmp_path, limit=1500))
    assert err.startswith("nnopt landscape: error: cannot write ls/") and err.endswith("File too large")
    assert os.listdir(tmp_path / "ls") == []


@pytest.mark.parametrize("steps", [math.inf, math.nan, 1e300, -3, "12"])
def test_export_refuses_step_counts_an_event_file_cannot_hold(run_folder, tmp_path, steps, capsys):
    from nnopt_cli.cli.export import run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("summary.json", "metrics.jsonl"):
        (run_dir / name).write_bytes((run_folder / name).read_bytes())
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows[-1].pop("total_steps", None)
    rows[-1]["steps"] = steps
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as e:  # the note says why; nothing exported: exit 1
        run(["tensorboard", str(run_dir), "--out", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.splitlines() == [
        f"nnopt: run: epoch row {len(rows)} of metrics.jsonl has steps={steps!r}, not a step count; not exported",
        "nnopt export: error: nothing exported, see above"]
    assert not (tmp_path / "tb").exists()


@pytest.mark.parametrize("args, message", [
    (["--stats-seed", "-5"], "--stats-seed -5: a whole number from 0 to 9223372036854775807"),
    (["--bootstrap", "1e12"], "--bootstrap 1e12: a whole number from 100 to 1000000"),
    (["--bootstrap", "1000000000000"], "--bootstrap 1000000000000: a whole number from 100 to 1000000"),
    (["--bootstrap", "many"], "--bootstrap 'many': a whole number from 100 to 1000000"),
])
def test_compare_statistics_flags_out_of_range_are_one_line(run_folder, args, message, capsys):
    from nnopt_cli.cli.compare import run

    with pytest.raises(SystemExit) as e:
        run([str(run_folder), *args])
    assert e.value.code == 2 and capsys.readouterr().err == f"nnopt compare: error: {message}\n"


# ---------------------------------------------------------------------------- refused before training


@pytest.mark.parametrize("overrides, message", [
    (["optimizer=lbfgs", "optimizer.max_iter=0"], "optimizer.max_iter=0: an integer >= 1"),
    (["optimizer=lbfgs", "optimizer.max_iter=-5"], "optimizer.max_iter=-5: an integer >= 1"),
    (["optimizer=lbfgs", "optimizer.history_size=0"], "optimizer.history_size=0: an integer >= 1"),
    (["optimizer=lbfgs", "+optimizer.max_eval=0"], "optimizer.max_eval=0: an integer >= 1"),
    (["post=prune", "~post.prune.sparsity"], "~post.prune.sparsity: deleted, but nnopt reads this key; set a "
                                             "value instead, e.g. post.prune.sparsity=0.9"),
    (["post=quantize", "~post.quantize.bits"], "~post.quantize.bits: deleted, but nnopt reads this key"),
    (["post=prune", "~post.measure.latency_repeats"], "~post.measure.latency_repeats: deleted"),
    (["post=distill", "~post.distill.student"], "~post.distill.student: deleted, but nnopt reads this key; set its "
                                               "keys instead (post.distill.student.name, "),
    (["~checkpoint.every"], "~checkpoint.every: deleted, but nnopt reads this key; set a value instead, "
                            "e.g. checkpoint.every=1"),
    (["optimizer=adam", "+optimizer/wrapper=lookahead"],
     "+optimizer/wrapper='lookahead': optimizer/wrapper is in the defaults list already (conf/train.yaml): "
     "write optimizer/wrapper=lookahead, without the +"),
])
def test_settings_that_would_give_a_silent_wrong_result_are_refused(overrides, message):
    from nnopt_cli.run.tools import compose_config

    with pytest.raises(ConfigError) as e:
        compose_config([*TINY, *overrides])
    assert str(e.value).startswith(f"invalid config: {message}") and "\n" not in str(e.value)


def test_the_form_the_docs_give_for_a_wrapper_works():
    from nnopt_cli.run.tools import compose_config

    cfg = compose_config([*TINY, "optimizer=adam", "optimizer/wrapper=lookahead"])
    assert cfg["optimizer"]["wrapper"]["_target_"] == "pytorch_optimizer.Lookahead"


def test_a_run_folder_that_holds_runs_below_it_is_refused(run_folder, tmp_path):
    from nnopt_cli.run.job import refuse_reuse

    parent = tmp_path / "outputs"
    (parent / "2026-01-01" / "10-00-00").mkdir(parents=True)
    (parent / "2026-01-01" / "10-00-00" / "summary.json").write_bytes((run_folder / "summary.json").read_bytes())
    with pytest.raises(RunDirError, match=r"outputs holds other runs \(.*10-00-00 is one\); a run's folder holds "
                                          r"one run: choose another hydra.run.dir"):
        refuse_reuse(parent, multirun=False)
    refuse_reuse(parent, multirun=True)  # a sweep's folder holds its jobs' folders
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    refuse_reuse(tmp_path / "empty", multirun=False)


@pytest.mark.slow
def test_nnopt_train_into_a_folder_of_runs_is_one_line_and_trains_nothing(run_folder, tmp_path):
    (tmp_path / "outputs" / "a").mkdir(parents=True)
    (tmp_path / "outputs" / "a" / "summary.json").write_bytes((run_folder / "summary.json").read_bytes())
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "outputs").rglob("*"))
    err = one_line(nnopt("train", *TINY, "hydra.run.dir=outputs", cwd=tmp_path), code=2)
    assert "outputs holds other runs" in err
    # nothing left behind: no Hydra log, no lock, no .hydra/
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "outputs").rglob("*")) == before
    # a folder that holds a run itself: refused, and every file of it as it was
    import shutil

    shutil.copytree(run_folder, tmp_path / "one")
    files = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "one").rglob("*") if p.is_file()}
    err = one_line(nnopt("train", *TINY, "hydra.run.dir=one", cwd=tmp_path), code=2)
    assert "one already holds a run" in err and "nothing in it was changed" in err
    assert {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "one").rglob("*") if p.is_file()} == files


def test_a_fifo_in_place_of_the_mnist1d_cache_is_regenerated_not_waited_on(tmp_path, caplog):
    from nnopt_cli.data import mnist1d

    node = {"num_samples": 200, "train_split": 0.8, "final_seq_length": 40, "shuffle_seq": False, "seed": 42}
    path = mnist1d.cache_path(tmp_path, node)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    x, y, x_test, y_test = mnist1d.load(tmp_path, node)  # opened blocking, this waited forever for a writer
    assert x.shape == (160, 1, 40) and x_test.shape == (40, 1, 40)
    assert path.is_file() and not path.is_symlink()  # the FIFO was replaced by the cache
    assert "is unreadable (ValueError: not a regular file); regenerating it" in caplog.text
    again = mnist1d.load(tmp_path, node)
    assert all((a == b).all() for a, b in zip((x, y, x_test, y_test), again, strict=True))


def test_out_of_space_is_told_apart_from_other_errors():
    from nnopt_cli.store.folder import _write_error
    from nnopt_cli.store.outputs import out_of_space

    assert out_of_space(_write_error(Path("x"), OSError(28, "No space left on device")))
    assert out_of_space(RuntimeError("torch.save failed")) is False
    try:
        try:
            raise OSError(27, "File too large")
        except OSError:
            raise RuntimeError("wrapped") from None  # the context is still the OSError
    except RuntimeError as e:
        assert out_of_space(e)
    assert not out_of_space(NnoptError("invalid config")) and not out_of_space(PermissionError(13, "denied"))
