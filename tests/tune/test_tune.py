"""`nnopt tune` end to end on tiny synthetic data: trials are run folders, pruning stops a bad
config, a killed study reruns to exactly n_trials, two processes share one journal, and the
dashboard and TensorBoard serve the study on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nnopt_cli.cli.tune import tune
from nnopt_cli.compare.discover import discover
from nnopt_cli.tune.pruning import JOURNAL, journal_storage
from tests.conftest import REPO, TINY, run_cli
from tests.hold import hold_overrides, release, wait_until_held


def write_preset(folder: Path, name: str, params: dict, **settings) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"tune": {"params": params, **settings}}))
    return path


def load(study_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=journal_storage(study_dir / JOURNAL))


def study_dir_of(tmp_path: Path, name: str) -> Path:
    """The one default study folder of preset `name`: outputs/tune/<name>-<hash of the overrides>."""
    found = list((tmp_path / "outputs" / "tune").glob(f"{name}-*"))
    assert len(found) == 1, found
    return found[0]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_every_trial_is_a_run_folder_and_the_best_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    preset = write_preset(tmp_path, "small", {"optimizer": "choice(sgd, adam)",
                                              "optimizer.lr": "tag(log, interval(1e-3, 0.3))"},
                          n_trials=3, sampler={"name": "random", "seed": 0})
    assert tune(str(preset), [], TINY) == 0
    study_dir = study_dir_of(tmp_path, "small")
    assert re.fullmatch(r"small-[0-9a-f]{8}", study_dir.name)  # readable: the preset and a short hash
    study = load(study_dir, "small")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert study.metric_names == ["best/val/acc"]  # what optuna-dashboard names the objective
    for t in study.trials:  # the run folder trained what the trial sampled, and scored what it was told
        cfg = yaml.safe_load((study_dir / str(t.number) / ".hydra" / "config.yaml").read_text())
        assert cfg["optimizer"]["lr"] == t.params["optimizer.lr"]
        assert cfg["optimizer"]["_target_"] == {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam"}[
            t.params["optimizer"]]
        assert summary(study_dir / str(t.number))["best/val/acc"] == t.value
    best = json.loads((study_dir / "best.json").read_text())
    assert best["best_value"] == max(t.value for t in study.trials) == study.best_value
    assert best["best_params"] == study.best_params and yaml.safe_load((study_dir / "best.yaml").read_text()) == best
    assert f"optimizer.lr={study.best_params['optimizer.lr']!r}" in best["retrain"]
    runs = {r.label: r for r in discover([study_dir])}
    assert sorted(runs) == ["0", "1", "2"] and {r.status for r in runs.values()} == {"completed"}
    assert runs["0"].config["optimizer"] == study.trials[0].params["optimizer"]  # compare sees the choice
    out = capsys.readouterr().out
    assert "best trial" in out and "3 completed, 0 pruned, 0 failed" in out
    # the same command again: the study holds its 3 trials, nothing runs
    assert tune(str(preset), [], TINY) == 0
    assert len(load(study_dir, "small").trials) == 3


def test_rerun_with_another_space_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = write_preset(tmp_path, "s", {"optimizer.lr": "interval(0.01, 0.1)"}, n_trials=1)
    assert tune(str(preset), [], TINY) == 0
    with pytest.raises(Exception, match="was made with another space"):
        tune(str(preset), [("params.optimizer.lr", "interval(0.01, 0.2)")], TINY)


def test_other_overrides_get_their_own_study_and_the_same_command_continues_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = write_preset(tmp_path, "b", {"optimizer.lr": "tag(log, interval(1e-3, 0.1))"}, n_trials=1,
                          sampler={"name": "random", "seed": 0}, objective="test/loss", direction="minimize")
    other = [*TINY, "dataset.n_train=256"]
    assert tune(str(preset), [], TINY) == 0 and tune(str(preset), [], other) == 0
    folders = sorted((tmp_path / "outputs" / "tune").iterdir())
    assert len(folders) == 2 and all(re.fullmatch(r"b-[0-9a-f]{8}", f.name) for f in folders)
    n_train = {f: yaml.safe_load((f / "0" / ".hydra" / "config.yaml").read_text())["dataset"]["n_train"]
               for f in folders}
    assert sorted(n_train.values()) == [256, 384]  # each study trained on its own config, never mixed
    first = next(f for f in folders if n_train[f] == 384)
    assert load(first, "b").metric_names == ["test/loss"]
    # the first command again, asking for one more trial: it continues its own study
    assert tune(str(preset), [("n_trials", 2)], TINY) == 0
    assert sorted((tmp_path / "outputs" / "tune").iterdir()) == folders
    assert {f: len(load(f, "b").trials) for f in folders} == {f: 2 if f == first else 1 for f in folders}
    # an explicit study folder is used as given, and refuses a study of another config
    mine = tmp_path / "mine"
    assert tune(str(preset), [("dir", str(mine))], TINY) == 0 and len(load(mine, "b").trials) == 1
    with pytest.raises(Exception, match="was made with another base"):
        tune(str(preset), [("dir", str(mine))], other)


def test_a_study_folder_named_without_the_hash_is_pointed_to(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    preset = write_preset(tmp_path, "old", {"optimizer.lr": "interval(0.01, 0.1)"}, n_trials=1)
    unkeyed = tmp_path / "outputs" / "tune" / "old"
    unkeyed.mkdir(parents=True)
    (unkeyed / JOURNAL).write_text("")
    assert tune(str(preset), [], TINY) == 0
    err = capsys.readouterr().err
    assert ("nnopt: note: outputs/tune/old holds a study of the same name, started without the overrides' hash "
            "in its folder name; to continue that one instead, add tune.dir=outputs/tune/old") in err
    assert tune(str(preset), [], TINY) == 0
    assert "note" not in capsys.readouterr().err  # once the keyed study exists, it is the one continued


def test_failed_trial_counts_and_the_study_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # momentum must be < 1: the validation refuses 1.5 before any data is loaded
    preset = write_preset(tmp_path, "f", {"optimizer.momentum": "choice(0.5, 1.5)"}, n_trials=4,
                          sampler={"name": "random", "seed": 0})
    assert tune(str(preset), [], [*TINY, "optimizer=momentum"]) == 0
    study_dir = study_dir_of(tmp_path, "f")
    study = load(study_dir, "f")
    assert len(study.trials) == 4  # failed trials count toward n_trials
    states = {v: {t.state for t in study.trials if t.params["optimizer.momentum"] == v} for v in (0.5, 1.5)}
    assert states == {0.5: {TrialState.COMPLETE}, 1.5: {TrialState.FAIL}}
    for t in study.trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs["error"] == "invalid config: optimizer.momentum=1.5: a number >= 0 and < 1"
            assert summary(study_dir / str(t.number))["status"] == "failed"


def test_a_config_built_to_be_bad_is_pruned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # an LR of 1e-7 learns nothing in 3 epochs; 0.01 reaches the top accuracy after the first
    preset = write_preset(tmp_path, "p", {"optimizer.lr": "choice(0.01, 1e-7)", "seed": "choice(0, 1, 2)"},
                          n_trials=6, sampler={"name": "grid", "seed": 0},
                          pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    assert tune(str(preset), [], [*TINY, "optimizer=adam", "epochs=3"]) == 0
    study_dir = study_dir_of(tmp_path, "p")
    study = load(study_dir, "p")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.params["optimizer.lr"] == 1e-7 for t in pruned)
    for t in pruned:
        s = summary(study_dir / str(t.number))
        assert s["status"] == "pruned" and s["epochs"] < 3
        assert list(t.intermediate_values) == list(range(1, s["epochs"] + 1))
    statuses = {r.label: r.status for r in discover([study_dir])}
    assert Counter(statuses.values())["pruned"] == len(pruned)  # nnopt compare shows them as pruned


# ---------------------------------------------------------------------------- processes


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "nnopt_cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_study_reruns_to_exactly_n_trials(tmp_path):
    preset = write_preset(tmp_path, "k", {"optimizer.lr": "tag(log, interval(1e-3, 0.1))"}, n_trials=4,
                          sampler={"name": "random", "seed": 0})
    flags = tmp_path / "flags"
    flags.mkdir()
    args = ("tune", f"hparams_search={preset}", *TINY, *hold_overrides(flags, run_name=1))
    proc = start_cli(*args, cwd=tmp_path)
    wait_until_held(flags, 1, proc)  # trial 1 is held at the end of its first epoch: kill it there
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    study_dir = study_dir_of(tmp_path, "k")
    assert summary(study_dir / "1")["status"] == "running"
    release(flags)

    rerun = run_cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "trial 1: the process running trial 1 died; queued again" in rerun.stderr
    study = load(study_dir, "k")
    states = Counter(t.state for t in study.trials)
    assert states == {TrialState.COMPLETE: 4, TrialState.FAIL: 1}
    (dead,) = [t for t in study.trials if t.state == TrialState.FAIL]
    (redo,) = [t for t in study.trials if t.user_attrs.get("retry_of") == dead.number]
    assert dead.number == 1 and redo.state == TrialState.COMPLETE and redo.params == dead.params
    assert summary(study_dir / "1")["status"] == "failed" and "died" in summary(study_dir / "1")["error"]
    statuses = Counter(r.status for r in discover([study_dir]))
    assert statuses == {"completed": 4, "failed": 1}


@pytest.mark.slow
def test_two_processes_share_one_study_without_losing_or_repeating_a_trial(tmp_path):
    preset = write_preset(tmp_path, "two", {"optimizer.lr": "tag(log, interval(1e-3, 0.1))"}, n_trials=6,
                          sampler={"name": "random", "seed": 0})
    args = ("tune", f"hparams_search={preset}", *TINY, "epochs=3")
    procs = [start_cli(*args, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    study_dir = study_dir_of(tmp_path, "two")
    study = load(study_dir, "two")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    assert sorted(p.name for p in study_dir.iterdir() if p.name.isdigit()) == [str(i) for i in range(6)]
    lrs = [t.params["optimizer.lr"] for t in study.trials]
    assert len(set(lrs)) == 6  # no draw repeated across the processes
    for t in study.trials:
        cfg = yaml.safe_load((study_dir / str(t.number) / ".hydra" / "config.yaml").read_text())
        assert cfg["optimizer"]["lr"] == t.params["optimizer.lr"]
        assert summary(study_dir / str(t.number))["status"] == "completed"
    ran = [sum(line.startswith("trial ") for line in out.splitlines()) for out, _ in outs]
    assert sum(ran) == 6


# ---------------------------------------------------------------------------- viewers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_when_up(url: str, proc: subprocess.Popen, timeout: float = 90) -> bytes:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.communicate()[1][-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url} in {timeout} s")


def serve(cmd: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # offline: nothing leaves the host
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_dashboard_and_tensorboard_serve_the_study_on_localhost(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = write_preset(tmp_path, "view", {"optimizer.lr": "interval(0.01, 0.1)"}, n_trials=2)
    assert tune(str(preset), [], TINY) == 0
    study_dir = study_dir_of(tmp_path, "view")
    assert run_cli("export", "tensorboard", str(study_dir), cwd=tmp_path).returncode == 0
    bin_dir = Path(sys.executable).parent

    port = free_port()
    dash = serve([str(bin_dir / "optuna-dashboard"), str(study_dir / JOURNAL), "--host", "127.0.0.1",
                  "--port", str(port), "--quiet"])
    try:
        studies = json.loads(get_when_up(f"http://127.0.0.1:{port}/api/studies", dash))["study_summaries"]
        assert [s["study_name"] for s in studies] == ["view"]
    finally:
        dash.kill()
        dash.communicate()

    port = free_port()
    tb = serve([str(bin_dir / "tensorboard"), "--logdir", str(study_dir), "--host", "127.0.0.1",
                "--port", str(port)])
    try:
        runs = json.loads(get_when_up(f"http://127.0.0.1:{port}/data/runs", tb))
        assert sorted(runs) == ["0", "0/hparams", "1", "1/hparams"]  # each trial's curves and HParams session
        tags = json.loads(get_when_up(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", tb))
        assert "val/acc" in tags["0"] and "test/acc" in tags["1/hparams"] and "test/acc" not in tags["1"]
    finally:
        tb.kill()
        tb.communicate()


@pytest.mark.parametrize("args, message", [
    (["epochs=1"], "nnopt tune needs hparams_search=<preset> (conf/hparams_search: compression_pareto, "
                    "mnist_optuna)"),
    (["hparams_search=nope"], "invalid config: hparams_search='nope': one of compression_pareto, mnist_optuna, "
                                 "or the path"),
    (["hparams_search=mnist_optuna", "--multirun"], "unexpected argument '--multirun'"),
    (["hparams_search=mnist_optuna", "hydra/launcher=joblib"], "invalid config: hydra/launcher='joblib': nnopt tune"),
    (["hparams_search=mnist_optuna", "optimizer.lrr=0.1"], "invalid config: optimizer.lrr='0.1': no such key"),
    (["hparams_search=mnist_optuna", "optimizer.lr=0.1"], "invalid config: optimizer.lr='0.1': is searched"),
    (["hparams_search=mnist_optuna", "tune.sampler=annealing"], "invalid config: tune.sampler.name='annealing'"),
])
def test_command_line_mistakes_are_one_line(args, message, tmp_path, monkeypatch, capsys):
    from nnopt_cli.cli.tune import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith(f"nnopt: error: {message}") and "\n" not in err, err
    assert not (tmp_path / "outputs").exists()  # refused before any study or trial


def test_nnopt_train_points_a_search_preset_to_nnopt_tune(cli, tmp_path):
    out = cli("train", "-m", "hparams_search=mnist_optuna")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "nnopt tune hparams_search=mnist_optuna" in out.stderr
    assert not (tmp_path / "outputs").exists()
