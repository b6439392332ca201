"""Checkpoint and resume: a run cut short and resumed ends bit for bit like the run left alone."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nnopt_cli.run.recipe as runner
from nnopt_cli.run.job import resume_config
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store.checkpoint import FORMAT, CheckpointError, decode_rows, load_checkpoint
from nnopt_cli.store.folder import read_metrics
from tests.conftest import REPO, TINY, compose_cfg, run_cli

# techniques whose state lives outside the model: dropout (global RNG), the random batch-size
# policy, per-step and plateau schedulers, momentum, early stopping with best-weights restore
CASES = {
    "dropout-random-onecycle": ["model.dropout=0.3", "batch_size=random", "batch_size.min_size=16",
                                "batch_size.max_size=96", "scheduler=onecycle"],
    "sgd-plateau-earlystop-l2-clip": ["optimizer=momentum", "scheduler=plateau", "scheduler.patience=0",
                                      "regularizer=l2", "grad_clip=norm", "early_stopping.enabled=true",
                                      "early_stopping.monitor=val/acc", "early_stopping.mode=max",
                                      "early_stopping.patience=3"],
}


def strip_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time_s", "train_s")} for r in rows]


def assert_same_run(a: Path, b: Path) -> None:
    """Same metrics (all but wall time) and the very same final weights."""
    assert strip_time(read_metrics(a / "metrics.jsonl")) == strip_time(read_metrics(b / "metrics.jsonl"))
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("status", "test/loss", "test/acc", "best/val/acc", "best/val/epoch", "epochs", "stop_reason"):
        assert sa[key] == sb[key], key


class Crash(Exception):
    """Stands in for a kill: raised after a given number of validation passes."""


def crash_after(monkeypatch, n_evals: int) -> None:
    calls = {"n": 0}
    original = runner.evaluate_split

    def evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_evals:
            raise Crash
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_split", evaluate)


def cut_short(cfg: dict, run_dir, monkeypatch, n_evals: int) -> None:
    """Train `cfg` into run_dir until it "dies" after n_evals validation passes (crash_after)."""
    with monkeypatch.context() as m:
        crash_after(m, n_evals)
        with pytest.raises(Crash):
            train(cfg, RunContext(run_dir))


@pytest.mark.parametrize("case", sorted(CASES))
def test_crash_after_epoch_k_then_resume_is_bit_exact(case, tmp_path, monkeypatch):
    cfg = compose_cfg(*CASES[case], "epochs=4")
    reference = train(cfg, RunContext(tmp_path / "alone"))
    assert reference["status"] == "completed"

    cut_short(cfg, tmp_path / "cut", monkeypatch, 2)  # epochs 1 and 2 finish, epoch 3's validation "dies"
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["metrics"]) == 2
    summary = train(cfg, RunContext(tmp_path / "cut", resume=True))
    assert summary["resumed_from_epoch"] == 2
    assert_same_run(tmp_path / "alone", tmp_path / "cut")


def test_checkpoint_holds_every_state_as_plain_data(tmp_path):
    cfg = compose_cfg("model.dropout=0.2", "scheduler=cosine", "early_stopping.enabled=true", "checkpoint.every=1")
    train(cfg, RunContext(tmp_path))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # no pickled Python objects
    assert isinstance(ckpt["metrics"], str)  # the rows as one JSON text
    ckpt["metrics"] = decode_rows(ckpt["metrics"])
    assert ckpt["epoch"] == cfg["epochs"] == len(ckpt["metrics"])
    assert set(ckpt["rng"]) == {"torch", "numpy", "python", "cuda"}
    assert set(ckpt["trainer"]) >= {"optimizer", "scheduler", "scaler", "generator", "batch_size_policy"}
    assert ckpt["trainer"]["scheduler"]["last_epoch"] == cfg["epochs"]
    assert ckpt["early_stopping"]["best_state"] is not None
    assert ckpt["config"]["model"]["dropout"] == 0.2
    assert ckpt["metrics"] == read_metrics(tmp_path / "metrics.jsonl")


def test_resume_rows_written_after_the_checkpoint_are_redone_not_duplicated(tmp_path, monkeypatch):
    cfg = compose_cfg("epochs=3", "checkpoint.every=2")
    reference = tmp_path / "alone"
    train(cfg, RunContext(reference))
    cut_short(cfg, tmp_path / "cut", monkeypatch, 2)  # epoch 2 checkpointed; epoch 3 never finishes
    # a kill between the metrics append of epoch 3 and its checkpoint, plus a torn last line
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write(json.dumps(read_metrics(reference / "metrics.jsonl")[2]) + "\n" + '{"epoch": 4, "train/lo')
    train(cfg, RunContext(tmp_path / "cut", resume=True))
    rows = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert_same_run(reference, tmp_path / "cut")


def test_resume_without_a_checkpoint_starts_over_in_the_same_folder(tmp_path, monkeypatch):
    cfg = compose_cfg("epochs=2")
    train(cfg, RunContext(tmp_path / "alone"))
    cut_short(cfg, tmp_path / "cut", monkeypatch, 0)  # dies in epoch 1: no checkpoint yet
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()
    assert train(cfg, RunContext(tmp_path / "cut", resume=True))["resumed_from_epoch"] == 0
    assert_same_run(tmp_path / "alone", tmp_path / "cut")


def test_resume_refuses_a_checkpoint_of_another_experiment(tmp_path):
    train(compose_cfg("epochs=1"), RunContext(tmp_path))
    with pytest.raises(CheckpointError, match=r"different experiment .*optimizer"):
        train(compose_cfg("epochs=1", "optimizer=sgd"), RunContext(tmp_path, resume=True))


def test_resume_config_takes_the_runs_own_config_and_refuses_changes(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    saved = compose_cfg("optimizer=sgd", "epochs=3")
    (run / ".hydra" / "config.yaml").write_text(json.dumps(saved))  # JSON is YAML
    current = compose_cfg("epochs=3", f"resume={run}")  # the defaults: optimizer=adam
    cfg = resume_config(run, current, [f"resume={run}", "epochs=3"])  # same value: fine
    assert cfg["optimizer"]["_target_"] == "torch.optim.SGD" and cfg["resume"] == str(run)
    with pytest.raises(Exception, match=r"override optimizer=adam would change the experiment"):
        resume_config(run, current, [f"resume={run}", "optimizer=adam"])
    with pytest.raises(Exception, match=r"override epochs=5 would change .*epochs=3"):
        resume_config(run, compose_cfg("epochs=5"), ["epochs=5"])


# ---------------------------------------------------------------------------- kill -9 (real processes)

KILL_RUN = [o for o in TINY if not o.startswith(("dataset.n_train", "epochs", "batch_size.size"))] + [
    "dataset.n_train=1600", "epochs=5", "batch_size=random", "batch_size.min_size=8", "batch_size.max_size=40",
    "model.dropout=0.2", "scheduler=cosine"]


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "nnopt_cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_rows(run_dirs, proc: subprocess.Popen, rows: int, timeout: float = 120) -> Path | None:
    """The run folder once its metrics.jsonl has `rows` lines (None if the process ended first)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        found = [d for d in run_dirs() if (d / "summary.json").exists()]
        if found and (rows == 0 or len(read_metrics(found[0] / "metrics.jsonl")) >= rows):
            return found[0]
        time.sleep(0.02)
    return None


@pytest.mark.slow
def test_kill_9_at_random_points_leaves_readable_resumable_folders(tmp_path):
    reference = tmp_path / "alone"
    train(compose_cfg(*KILL_RUN, tiny=False), RunContext(reference))
    for seed in range(3):
        rnd = random.Random(seed)
        cwd = tmp_path / f"kill{seed}"
        cwd.mkdir()
        proc = start_cli([*KILL_RUN, f"hydra.run.dir=run{seed}"], cwd)
        run = wait_for_rows(lambda c=cwd, s=seed: [c / f"run{s}"], proc, rnd.randint(0, 3))
        time.sleep(rnd.uniform(0, 0.3))  # anywhere in an epoch, a validation, or a checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert run is not None, proc.stderr.read()
        # readable: every file parses, the checkpoint (if any) loads safely and matches the metrics
        summary = json.loads((run / "summary.json").read_text())
        rows = read_metrics(run / "metrics.jsonl")
        if (run / "checkpoint.pt").exists():
            ckpt = load_checkpoint(run / "checkpoint.pt")
            assert ckpt["metrics"] == rows[:ckpt["epoch"]]
        assert summary["status"] in ("running", "completed")
        # resumable, to the very same result (one resume through the real CLI, the others in-process)
        if seed == 0:
            done = run_cli("train", f"resume={run}", cwd=cwd)
            assert done.returncode == 0, done.stderr
        elif summary["status"] != "completed":
            cfg = resume_config(run, compose_cfg(*KILL_RUN, tiny=False), [])
            train(cfg, RunContext(run, resume=True))
        assert_same_run(reference, run)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_checkpoint_carries_cuda_rng_and_grad_scaler_and_resumes(precision, tmp_path, monkeypatch):
    from nnopt_cli.store.checkpoint import rng_state, set_rng_state

    state = rng_state(torch.device("cuda"))
    first = torch.rand(4, device="cuda")
    set_rng_state(state)
    assert torch.equal(first, torch.rand(4, device="cuda"))

    cfg = compose_cfg("device=cuda", f"precision={precision}", "deterministic=true", "model.dropout=0.2", "epochs=3")
    train(cfg, RunContext(tmp_path / "alone"))
    cut_short(cfg, tmp_path / "cut", monkeypatch, 1)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert ckpt["rng"]["cuda"] is not None
    assert (ckpt["trainer"]["scaler"] is not None) == (precision == "fp16")
    assert train(cfg, RunContext(tmp_path / "cut", resume=True))["status"] == "completed"
    # with deterministic algorithms the resumed CUDA run matches the uninterrupted one
    assert_same_run(tmp_path / "alone", tmp_path / "cut")


def test_resume_of_a_folder_from_before_the_module_moves_and_format_2(tmp_path, monkeypatch):
    """An interrupted run folder as an earlier nnopt left it: its .hydra/config.yaml and its
    checkpoint name `_target_`s by former module paths, and the checkpoint is format 1 (no
    counters, observers or averaging state). Resuming it gives the run an uninterrupted one gives."""
    import yaml

    from nnopt_cli.store.folder import save_state_dict
    from nnopt_cli.store.untrusted import former_targets

    cfg = compose_cfg("scheduler=wsd", "epochs=3")
    train(cfg, RunContext(tmp_path / "alone"))
    cut = tmp_path / "cut"
    cut_short(cfg, cut, monkeypatch, 2)
    ckpt = load_checkpoint(cut / "checkpoint.pt")
    dropped = ("counters", "observers", "averaging", "swa_scheduler", "raw_weights")
    save_state_dict(cut / "checkpoint.pt", {**ckpt, "format": 1, "config": former_targets(ckpt["config"]),
                                            "trainer": {k: v for k, v in ckpt["trainer"].items() if k not in dropped}})
    (cut / ".hydra").mkdir()
    (cut / ".hydra" / "config.yaml").write_text(yaml.safe_dump(former_targets(cfg)))
    assert "nnopt_cli.schedulers.wsd" in (cut / ".hydra" / "config.yaml").read_text()

    resumed = resume_config(cut, cfg, [])
    assert resumed["scheduler"]["_target_"] == "nnopt_cli.optim.schedulers.wsd"
    summary = train(resumed, RunContext(cut, resume=True))
    assert summary["resumed_from_epoch"] == 2 and summary["format"] == FORMAT
    assert_same_run(tmp_path / "alone", cut)  # the counters in every row included
    assert load_checkpoint(cut / "checkpoint.pt")["trainer"]["counters"]["total_steps"] == \
        read_metrics(cut / "metrics.jsonl")[-1]["total_steps"]


def test_resume_from_a_format_2_checkpoint_restores_its_rows_exactly(tmp_path, monkeypatch):
    """A run cut short by an nnopt that pickled the metrics rows as a list of dicts (format 2):
    resumed, its rows come back as they were and it ends as the run left alone."""
    from nnopt_cli.store.folder import save_state_dict

    cfg = compose_cfg("epochs=4")
    train(cfg, RunContext(tmp_path / "alone"))
    cut = tmp_path / "cut"
    cut_short(cfg, cut, monkeypatch, 3)
    ckpt = load_checkpoint(cut / "checkpoint.pt")
    rows = ckpt["metrics"]
    save_state_dict(cut / "checkpoint.pt", {**ckpt, "format": 2, "metrics": rows})  # as format 2 wrote it
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["metrics"] == rows
    (cut / "metrics.jsonl").write_text("")  # the rows can only come from the checkpoint
    summary = train(cfg, RunContext(cut, resume=True))
    assert summary["resumed_from_epoch"] == 3 and summary["format"] == FORMAT
    assert read_metrics(cut / "metrics.jsonl")[:3] == rows  # time_s and train_s included
    assert_same_run(tmp_path / "alone", cut)
    assert isinstance(torch.load(cut / "checkpoint.pt", weights_only=True)["metrics"], str)  # rewritten as format 3


def test_resume_still_refuses_a_renamed_target_off_the_allow_list(tmp_path):
    from nnopt_cli.store.targets import UntrustedTargetError

    train(compose_cfg("epochs=1"), RunContext(tmp_path))
    import yaml

    (tmp_path / ".hydra").mkdir()
    saved = {**compose_cfg("epochs=1"), "observers": {"evil": {"_target_": "nnopt_cli.observers.os.system"}}}
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(UntrustedTargetError, match=r"observers.evil._target_=nnopt_cli.training.observers.os.system"):
        resume_config(tmp_path, compose_cfg("epochs=1"), [])


@pytest.mark.slow
def test_cli_keep_none_completed_run_is_skipped_and_compared_without_a_checkpoint(tmp_path):
    bad = run_cli("train", *TINY, "checkpoint.keep=all", cwd=tmp_path)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "invalid config: checkpoint.keep='all': one of last, best, none" in bad.stderr
    sweep = ["-m", *TINY, "epochs=1", "checkpoint.keep=none", "skip_completed=true", "hydra.sweep.dir=sweep",
             "seed=1,2"]
    first = run_cli("train", *sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2 and not any((j / "checkpoint.pt").exists() for j in jobs)
    again = run_cli("train", *sweep, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 skipped" in again.stdout
    shown = run_cli("compare", str(tmp_path / "sweep"), "--format", "csv", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.count("completed") == 2, shown.stdout
