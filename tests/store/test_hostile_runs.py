"""Nothing lost, nothing silently wrong: one writer per run folder, .hydra/ kept for jobs
nnopt refuses or skips, no run replaced, checksums, full disks, signals outside the loop, odd values."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from nnopt_cli.config.overrides import check_keys, check_overrides
from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.optim.batch_size import BatchSizePolicy
from nnopt_cli.run.job import SetupSignals, keep_recorded_threads
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store.checkpoint import CheckpointError, load_checkpoint
from nnopt_cli.store.folder import RunDir, RunDirError, save_state_dict
from nnopt_cli.store.lock import RunLock, RunLocked
from nnopt_cli.sweep.report import collect_jobs, make_report
from nnopt_cli.training.device import configure_threads, max_threads, pin_threads
from tests.conftest import REPO, TINY, compose_cfg, run_cli
from tests.hold import hold_overrides, wait_until_held

HOLD = """
import sys, time
from nnopt_cli.store.lock import RunLock
RunLock(sys.argv[1], "test holder").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def one_line(proc, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("nnopt")]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------- locks


def test_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunLocked, match=rf"in use by pid {holder.pid} on {socket.gethostname()} .*test holder"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # kill -9: the kernel drops its flock
        holder.wait()
    with RunLock(tmp_path) as lock:  # the stale lock is taken over at once
        assert json.loads((tmp_path / ".nnopt.lock").read_text())["pid"] == os.getpid()
        assert lock.fd is not None


@pytest.mark.slow
def test_resume_and_skip_completed_refuse_a_folder_another_process_writes(tmp_path):
    run = tmp_path / "run"
    out = run_cli("train", *TINY, "hydra.run.dir=run", "epochs=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "interrupted"  # a run that could be resumed
    (run / "summary.json").write_text(json.dumps(summary))
    metrics_before = (run / "metrics.jsonl").read_bytes()
    holder = hold_lock(run)
    try:
        line = one_line(run_cli("train", f"resume={run}", cwd=tmp_path))
        assert f"run folder {run} is in use by pid {holder.pid}" in line
        sweep = run_cli("train", "-m", *TINY, "epochs=1", "seed=0", "hydra.sweep.dir=sw", "skip_completed=true",
                        NUMBERED, cwd=tmp_path)
        assert sweep.returncode == 0, sweep.stderr
        holder2 = hold_lock(tmp_path / "sw" / "0")
        try:
            sweep = run_cli("train", "-m", *TINY, "epochs=1", "seed=0,1", "hydra.sweep.dir=sw", "skip_completed=true",
                            NUMBERED, cwd=tmp_path)
        finally:
            holder2.kill()
            holder2.wait()
        assert sweep.returncode == 1 and "in use by pid" in sweep.stdout + sweep.stderr, sweep.stdout + sweep.stderr
        report = json.loads((tmp_path / "sw" / "report.json").read_text())
        assert [j["status"] for j in report["jobs"]] == ["failed", "completed"]
    finally:
        holder.kill()
        holder.wait()
    assert (run / "metrics.jsonl").read_bytes() == metrics_before


@pytest.mark.slow
def test_a_running_train_holds_the_lock(tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "nnopt_cli", "train", *TINY, *hold_overrides(flags),
                             "hydra.run.dir=run"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        wait_until_held(flags, 1, proc)  # mid-run: after its first epoch
        with pytest.raises(RunLocked, match=f"pid {proc.pid}"):
            RunLock(tmp_path / "run").acquire()
    finally:
        proc.kill()
        proc.wait()
    RunLock(tmp_path / "run").acquire().release()


# ---------------------------------------------------------------------------- .hydra/ and reuse

SIDE_FILES = (".nnopt.lock", "train.log")
# job folders by number, as older versions named them, or all jobs in one folder: the tests below
# need to know a job's folder before it exists, or two experiments meeting in one folder
NUMBERED = "hydra.sweep.subdir=${hydra.job.num}"
ONE_FOLDER = "hydra.sweep.subdir=0"


@pytest.mark.slow
def test_refused_and_skipped_jobs_keep_their_hydra_files_and_fresh_runs_replace_nothing(tmp_path):
    first = run_cli("train", "-m", *TINY, "epochs=1", "seed=0", "hydra.sweep.dir=sw", ONE_FOLDER, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    job = tmp_path / "sw" / "0"
    hydra_before = {f.name: f.read_bytes() for f in (job / ".hydra").iterdir()}
    log_before = (job / "train.log").read_bytes()
    files_before = {f.name: f.read_bytes() for f in job.iterdir() if f.is_file() and f.name not in SIDE_FILES}
    # another experiment in the same folder, skip_completed: refused, and .hydra/ still says seed=0
    other = run_cli("train", "-m", *TINY, "epochs=1", "seed=5", "hydra.sweep.dir=sw", "skip_completed=true",
                    ONE_FOLDER, cwd=tmp_path)
    assert other.returncode == 1 and "different experiment" in other.stdout + other.stderr
    # the same experiment: skipped, reported so
    same = run_cli("train", "-m", *TINY, "epochs=1", "seed=0", "hydra.sweep.dir=sw", "skip_completed=true",
                   ONE_FOLDER, cwd=tmp_path)
    assert same.returncode == 0 and "skipped" in same.stdout, same.stdout + same.stderr
    # without skip_completed: refused, nothing replaced
    again = run_cli("train", "-m", *TINY, "epochs=1", "seed=0", "hydra.sweep.dir=sw", cwd=tmp_path)
    assert again.returncode == 1 and "already holds a run" in again.stdout + again.stderr
    assert {f.name: f.read_bytes() for f in (job / ".hydra").iterdir()} == hydra_before
    assert {f.name: f.read_bytes() for f in job.iterdir() if f.is_file() and f.name not in SIDE_FILES} == files_before
    assert (job / "train.log").read_bytes().startswith(log_before)  # the log only gains the refusals
    assert yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[-1] == "seed=0"
    # a single run in a fixed folder: the second is refused with one line
    assert run_cli("train", *TINY, "epochs=1", "hydra.run.dir=one", cwd=tmp_path).returncode == 0
    line = one_line(run_cli("train", *TINY, "epochs=1", "seed=3", "hydra.run.dir=one", cwd=tmp_path))
    assert "one already holds a run" in line and "resume=" in line
    assert yaml.safe_load((tmp_path / "one" / ".hydra" / "config.yaml").read_text())["seed"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "parallel"])
def test_parallel_refusals_are_failures_not_skips(tmp_path, launcher):
    # numbered job folders (the layout of older sweeps, still chosen by this subdir): other seeds in the
    # same numbers are other experiments
    first = run_cli("train", "-m", *TINY, "epochs=1", "seed=0,1", "hydra.sweep.dir=sw", NUMBERED, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = run_cli("train", "-m", f"hydra/launcher={launcher}", "hydra.launcher.n_jobs=2", *TINY, "epochs=1", "seed=5,6",
                  "hydra.sweep.dir=sw", "skip_completed=true", NUMBERED, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads((tmp_path / "sw" / "report.json").read_text())
    assert [j["status"] for j in report["jobs"]] == ["failed", "failed"]
    assert all("different experiment" in j["note"] for j in report["jobs"])


# ---------------------------------------------------------------------------- checksums, disks, temporaries


def flip_tensor_bytes(path: Path) -> None:
    """Flip bytes inside the largest tensor's data (the zip stores tensors uncompressed)."""
    data = bytearray(path.read_bytes())
    state = torch.load(path, weights_only=True)
    tensors = state["model"] if "model" in state else state
    weight = max(tensors.values(), key=lambda t: t.numel())
    needle = weight.flatten()[:16].numpy().tobytes()
    at = data.find(needle)
    assert at > 0
    for i in range(at + 8, at + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_tensor_bytes_are_detected_on_load(tmp_path):
    cfg = compose_cfg("epochs=1")
    train(cfg, RunContext(tmp_path))
    flip_tensor_bytes(tmp_path / "checkpoint.pt")
    torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # torch itself does not notice
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is corrupt: its sha256 differs") as e:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="sha256 differs"):
        train(compose_cfg("epochs=2"), RunContext(tmp_path, resume=True))


def test_a_kill_between_the_checksum_and_the_file_rename_still_verifies(tmp_path):
    path = tmp_path / "model.pt"
    save_state_dict(path, {"w": torch.zeros(3)})
    old = path.read_bytes()
    save_state_dict(path, {"w": torch.ones(3)})
    path.write_bytes(old)  # as if the process died after writing model.pt.sha256, before the rename
    load_checkpoint_ok = torch.load(path, weights_only=True)
    from nnopt_cli.store.checkpoint import verify_checksum

    verify_checksum(path)
    assert torch.equal(load_checkpoint_ok["w"], torch.zeros(3))


def test_stale_temporaries_are_removed_when_the_folder_is_locked(tmp_path):
    (tmp_path / ".checkpoint.pt.tmp4242").write_bytes(b"x" * 1000)
    (tmp_path / ".summary.json.tmp17").write_bytes(b"{")
    (tmp_path / "keep.tmp5").write_bytes(b"mine")
    with RunLock(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".nnopt.lock", "keep.tmp5"]


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


@pytest.mark.slow
def test_full_disk_is_one_line_a_failed_status_and_no_temporaries(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NNOPT_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "nnopt_cli", "train", *TINY, "hydra.run.dir=run"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "File too large" in proc.stderr
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(r) for r in rows)


def test_failed_metrics_append_leaves_no_half_row(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 1})
    real_write = os.write

    def short_then_fail(fd, data):
        if len(data) > 20:
            real_write(fd, bytes(data[:7]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_then_fail)
    with pytest.raises(OSError, match="No space"):
        run.append_metrics({"epoch": 2, "train/loss": 0.5, "val/acc": 0.25})
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_a_run_dir_that_is_a_file_or_unwritable_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        RunDir(tmp_path / "f")
    with pytest.raises(ConfigError, match=r"hydra.run.dir='.*f': a folder \(this path is a file\)"):
        check_overrides([f"hydra.run.dir={tmp_path / 'f'}"])
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(RunDirError, match="cannot create run folder"):
            RunDir(ro / "run")


# ---------------------------------------------------------------------------- signals outside the loop


def test_setup_signals_turn_sigterm_into_an_interrupt():
    s = SetupSignals().install()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert s.signum == signal.SIGTERM
    finally:
        s.restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_post_training_marks_the_run_interrupted(tmp_path, sig, code):
    args = [*TINY, "epochs=1", "post=prune", "post.measure.latency_repeats=100000", "hydra.run.dir=run"]
    proc = subprocess.Popen([sys.executable, "-m", "nnopt_cli", "train", *args], cwd=tmp_path, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    summary_path = tmp_path / "run" / "summary.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads(summary_path.read_text())["status"] == "post_training":
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    else:
        pytest.fail(f"the run never reached post-training in 120 s: {proc.poll()=}")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err, err
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "interrupted" and signal.Signals(sig).name in summary["error"]
    assert "resume=" in err and (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_setup_never_claims_a_missing_checkpoint(tmp_path, sig, code):
    proc = subprocess.Popen([sys.executable, "-m", "nnopt_cli", "train", *TINY, "hydra.run.dir=run"], cwd=tmp_path,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    lock = tmp_path / "run" / ".nnopt.lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.stat().st_size):
        if time.time() > deadline or proc.poll() is not None:
            pytest.fail(f"the run never locked its folder: {proc.poll()=}")
        time.sleep(0.002)
    proc.send_signal(sig)  # the folder is locked: setup (or, on a fast machine, the first epoch) is under way
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err, err
    summary_path = tmp_path / "run" / "summary.json"
    if summary_path.exists():
        assert json.loads(summary_path.read_text())["status"] == "interrupted"
    if "checkpoint" in err and "no checkpoint" not in err:
        assert (tmp_path / "run" / "checkpoint.pt").exists(), err


# ---------------------------------------------------------------------------- sweeps


def test_sweep_report_survives_malformed_job_folders(tmp_path, capsys):
    since = time.time() - 5
    for name, summary in {"0": "[1, 2]", "1": '{"status": "completed", "test/acc": "high"}', "2": None,
                          "3": '{"status": 5}'}.items():
        job = tmp_path / name
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("- seed=" + name + "\n")
        if summary is not None:
            (job / "summary.json").write_text(summary)
    (tmp_path / "4" / ".hydra" / "overrides.yaml").mkdir(parents=True)  # a folder where a file should be
    os.mkfifo(tmp_path / "2" / "summary.json")
    report = make_report(tmp_path, since)
    statuses = {j["job"]: j["status"] for j in report["jobs"]}
    assert statuses["0"] == "failed" and statuses["1"] == "completed" and statuses["2"] == "failed"
    assert report["failed"] >= 2 and (tmp_path / "report.json").exists()
    assert "Traceback" not in capsys.readouterr().out
    assert collect_jobs(tmp_path / "missing", since) == []


# ---------------------------------------------------------------------------- silent wrong results


def test_added_keys_on_nnopts_own_nodes_are_refused():
    with pytest.raises(ConfigError, match=r"post.prune.thresh='0.01': nnopt reads no such key") as e:
        check_keys(["post=prune", "+post.prune.thresh=0.01"])
    assert "\n" not in str(e.value) and "thresh," not in str(e.value).split("keys of post.prune:")[1]
    check_keys(["post=prune", "+post.prune.threshold=0.01"])  # a key nnopt has (null by default) is fine
    with pytest.raises(ConfigError, match=r"criterion='mse': nnopt reads no such key.*top-level keys"):
        check_keys(["+criterion=mse"])
    with pytest.raises(ConfigError, match=r"model.width"):
        check_keys(["+model.width=3"])
    # new keyword arguments of a class nnopt builds, observers, and ++ on an existing key are fine
    check_keys(["+optimizer.amsgrad=true", "+observers.mine.every=3", "++epochs=3", "+experiment=optimizers"])
    with pytest.raises(ConfigError, match=r"optimizer.lrr.*to pass another argument to torch.optim.Adam"):
        check_keys(["optimizer.lrr=0.1"])


def test_group_choices_and_top_level_keys_are_checked_without_composing(monkeypatch):
    """Only a key below a group (optimizer.lr) or an added one (+key) needs the composed config; group
    options were checked by check_overrides, so a common command is composed once, by Hydra."""
    import hydra

    monkeypatch.setattr(hydra, "compose", lambda **kwargs: pytest.fail(f"composed for {kwargs['overrides']}"))
    check_keys(["optimizer=sgd", "scheduler=exp", "regularizer=[l1,l2]", "epochs=3", "seed=0,1", "optimizer=adam,sgd"])
    with pytest.raises(pytest.fail.Exception, match="optimizer.lr"):
        check_keys(["optimizer=sgd", "optimizer.lr=0.1"])


def test_empty_override_key_and_resume_not_a_path_are_one_line(tmp_path):
    with pytest.raises(NnoptError, match="has no key"):
        check_overrides(["=5"])
    line = one_line(run_cli("train", "resume=123", cwd=tmp_path))
    assert line == "nnopt: error: invalid config: resume=123: the path of a run folder"


@pytest.mark.parametrize("override,key", [
    ("optimizer.lr=inf", "optimizer.lr"), ("regularizer=l2", "regularizer.l2.weight"),
    ("seed=18446744073709551616", "seed"), ("seed=9223372036854775808", "seed"),
    ("threads=100000", "threads"), ("epochs=1000000000", "epochs"), ("batch_size.size=4294967296", "batch_size.size"),
    ("batch_size=double", "batch_size.factor"), ("model.batch_norm=true", "batch_size.size"),
])
def test_inf_huge_and_overflowing_values_are_one_line(override, key):
    cfg = compose_cfg(override)
    if override == "regularizer=l2":
        cfg["regularizer"]["l2"]["weight"] = math.inf
    if override == "batch_size=double":
        cfg["batch_size"]["factor"] = math.inf
    if override == "model.batch_norm=true":
        cfg["batch_size"]["size"] = 1
    with pytest.raises(ConfigError, match=rf"^invalid config: {key}=") as e:
        validate(cfg)
    assert "\n" not in str(e.value)


def test_legal_extremes_are_accepted():
    validate(compose_cfg("seed=9223372036854775807", f"threads={max_threads()}", "grad_clip=norm",
                         "grad_clip.norm_type=inf"))
    policy = BatchSizePolicy("double", 64, epochs=10**6, factor=1e300, max_size=4096)
    assert policy.epoch_size(10**6 - 1) == 4096  # no float overflow in factor ** doublings
    t0 = time.perf_counter()
    assert BatchSizePolicy("fixed", 64, epochs=10**6).total_steps(1000) == 16 * 10**6
    assert time.perf_counter() - t0 < 1.0


def test_seed_at_the_top_of_the_range_trains(tmp_path):
    s = train(compose_cfg("seed=9223372036854775807", "epochs=1"), RunContext(tmp_path))
    assert s["status"] == "completed"


def test_batch_norm_never_gets_a_one_sample_batch():
    """BatchNorm in training mode refuses a batch of one; min_batch=2 folds it into the one before."""
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).train()
    x = torch.randn(97 * 3 + 1, 4)
    plain = BatchSizePolicy("fixed", 97, epochs=1)
    assert plain.epoch_sizes(0, len(x))[-1] == 1
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(x[-1:])
    for policy in (BatchSizePolicy("fixed", 97, epochs=1, min_batch=2),
                   BatchSizePolicy("random", None, epochs=3, min_size=2, max_size=6, min_batch=2)):
        for epoch in range(policy.epochs):
            sizes = policy.epoch_sizes(epoch, len(x))
            assert sum(sizes) == len(x) and min(sizes) >= 2
            start = 0
            for b in sizes:
                model(x[start:start + b])
                start += b
    assert BatchSizePolicy("fixed", 97, epochs=1, min_batch=2).epoch_sizes(0, len(x)) == [97, 97, 98]


def test_resumed_run_keeps_its_recorded_thread_count():
    before = torch.get_num_threads()
    try:
        plain = {"threads": None}
        keep_recorded_threads(plain, {"threads": 1})
        assert configure_threads(None) == 1 and torch.get_num_threads() == 1
        pin_threads(None)
        keep_recorded_threads({"threads": 2}, {"threads": 1})  # an explicit value is the user's
        assert configure_threads(2) == 2
    finally:
        pin_threads(None)
        torch.set_num_threads(before)


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    """train_app locks the folder, and runner.train may lock it again: nested, not refused."""
    outer = RunLock(tmp_path).acquire()
    inner = RunLock(tmp_path).acquire()
    inner.release()
    holder_probe = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert "in use by pid" in holder_probe.stderr  # still held after the inner release
    outer.release()
    RunLock(tmp_path).acquire().release()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "parallel"])
def test_a_killed_parallel_worker_still_gets_a_report_and_exit_1(tmp_path, launcher):
    flags = tmp_path / "flags"
    flags.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "nnopt_cli", "train", "-m", f"hydra/launcher={launcher}",
                             "hydra.launcher.n_jobs=2", *TINY, *hold_overrides(flags, run_name=0), "seed=0,1",
                             "hydra.sweep.dir=sw", NUMBERED], cwd=tmp_path, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    wait_until_held(flags, 1, proc)  # job 0 is held after its first epoch
    lock = tmp_path / "sw" / "0" / ".nnopt.lock"
    os.kill(json.loads(lock.read_text())["pid"], signal.SIGKILL)  # the worker running job 0
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    # no traceback (joblib's TerminatedWorkerError included): one line that a worker died, and, when the
    # other job was still training as the sweep stopped, that job's interrupt lines; the report names the
    # job that died
    died = "nnopt: a worker process of the sweep died (killed, or out of memory); the jobs not started were not run"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert died in lines and all(ln.startswith("nnopt: ") for ln in lines), err
    interrupted = ("nnopt: SIGTERM received", "nnopt: interrupted by SIGTERM", "nnopt: to finish the sweep")
    assert all(ln.startswith(interrupted) for ln in lines if ln != died), err
    report = json.loads((tmp_path / "sw" / "report.json").read_text())
    assert report["aborted"].startswith("the launcher stopped") and report["failed"] >= 1
    assert "crashed" in out and "sweep aborted" in out


def test_a_folder_nnopt_may_not_write_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    """As root permissions do not apply, so an unwritable folder is simulated at the system call."""
    from nnopt_cli.store import lock as run_lock
    from nnopt_cli.store.folder import RunWriteError, record_failure

    real_open = os.open

    def denied(path, flags, *a, **kw):
        if flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(run_lock.os, "open", denied)
    with pytest.raises(RunDirError, match=r"cannot lock run folder .*: Permission denied") as e:
        RunLock(tmp_path).acquire()
    assert "\n" not in str(e.value)

    def denied_file(path, mode="r", *a, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    from nnopt_cli.store import outputs

    # shadows the builtin where run-folder files are opened for writing (the atomic-write core)
    monkeypatch.setattr(outputs, "open", denied_file, raising=False)
    with pytest.raises(RunWriteError, match=r"cannot write .*summary.json: Permission denied"):
        RunDir(tmp_path).write_summary({"status": "running"})
    record_failure(tmp_path, RunWriteError("cannot write x: Permission denied"))  # no second line
    assert capsys.readouterr().err == ""
