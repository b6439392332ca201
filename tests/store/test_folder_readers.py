"""Every reader of a run folder against a corpus of hostile folders: escaped interpolations that
would run code if anything resolved a folder's value twice, interpolation bombs, FIFOs, links to
/dev/zero or out of the folder, huge files. Each is refused in one line or read safely, none hangs,
and no payload ever writes its marker file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from nnopt_cli.cli import export as export_cli
from nnopt_cli.cli import fuse as fuse_cli
from nnopt_cli.cli import landscape as landscape_cli
from nnopt_cli.cli.compare import run as compare_run
from nnopt_cli.errors import NnoptError
from nnopt_cli.post.load import load_run_model
from nnopt_cli.run.job import resume_config
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.transfer import check_transfer
from nnopt_cli.store.checkpoint import safe_load
from nnopt_cli.store.folder import read_metrics, save_state_dict
from nnopt_cli.store.untrusted import UntrustedFileError, interpolation_size, load_config
from nnopt_cli.sweep.report import job_action
from tests.conftest import compose_cfg
from tests.store.test_hostile_folders import copy_run


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A real finished run folder (1 tiny epoch, step scheduler) with its .hydra/config.yaml."""
    run = tmp_path_factory.mktemp("good") / "run"
    cfg = compose_cfg("epochs=1", "scheduler=step")
    train(cfg, RunContext(run))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def unfinished(run: Path) -> None:
    """Make a copied folder look like a run killed before its first checkpoint."""
    (run / "checkpoint.pt").unlink(missing_ok=True)
    (run / "summary.json").write_text(json.dumps({"status": "running"}))


def create_payload(marker: Path) -> str:
    """An escaped `oc.create` whose `_target_` writes `marker` if anything resolves it a second time
    and then instantiates it (the first resolution turns `\\${` into a live `${`)."""
    return ("\\${oc.create:{_target_: pathlib.Path.write_text, self: {_target_: pathlib.Path, _args_: ['"
            + str(marker) + "']}, data: pwned}}")


def test_an_escaped_payload_really_runs_when_resolved_twice_and_instantiated(tmp_path):
    import hydra.utils

    marker = tmp_path / "pwned"
    once = OmegaConf.to_container(OmegaConf.create({"x": create_payload(marker)}), resolve=True)
    assert once["x"].startswith("${oc.create:")  # live again after one resolution
    hydra.utils.instantiate(OmegaConf.create(once))
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("key", ["gamma", "last_epoch", "step_size"])
def test_resume_never_runs_an_escaped_interpolation_in_a_scheduler_setting(good_run, tmp_path, key):
    run = copy_run(good_run, tmp_path / "run")
    unfinished(run)
    marker = tmp_path / "pwned"
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    cfg["scheduler"][key] = create_payload(marker)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    try:
        plain = resume_config(run, compose_cfg("epochs=1", "scheduler=step"), [f"resume={run}"])
        train(plain, RunContext(run, resume=True))
    except Exception as e:
        assert "\n" not in str(e)
    assert not marker.exists()


# ---------------------------------------------------------------------------- hostile folders

def interpolation_bomb(levels: int = 8) -> str:
    """About 1 kB: z<n> repeats z<n-1> ten times, so z8 would be 10**8 characters."""
    lines = ["z0: xxxxxxxxxx"] + [f"z{i}: '" + ("${z" + str(i - 1) + "}") * 10 + "'" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))


def test_the_interpolation_bomb_is_small_and_really_explodes(tmp_path):
    text = interpolation_bomb()
    assert len(text) < 1100
    assert interpolation_size(yaml.safe_load(text), 10**12) > 10**8
    small = yaml.safe_load(interpolation_bomb(3))  # 1,000 x's: OmegaConf really expands it
    assert len(OmegaConf.to_container(OmegaConf.create(small), resolve=True)["z3"]) == 10**4


def _edit_cfg(run: Path, edit) -> None:
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    edit(cfg)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))


def _replace(path: Path, make) -> None:
    path.unlink(missing_ok=True)
    make(path)


def hostile_folders(good: Path, root: Path, marker: Path) -> dict[str, Path]:
    """name -> a copy of `good` with one hostile change; all look unfinished (resume would go on)."""
    outside = root / "outside"
    outside.mkdir()
    (outside / "config.yaml").write_text((good / ".hydra" / "config.yaml").read_text())
    (outside / "rows.jsonl").write_text(json.dumps({"epoch": 1, "total_steps": 1, "val/acc": 0.99}) + "\n")
    payload = create_payload(marker)
    edits = {
        "interpolation bomb": lambda r: (r / ".hydra" / "config.yaml").write_text(
            (r / ".hydra" / "config.yaml").read_text() + interpolation_bomb() + "note: ${z8}\n"),
        "alias bomb": lambda r: (r / ".hydra" / "config.yaml").write_text(ALIAS_BOMB),
        "escaped oc.create in a scheduler setting": lambda r: _edit_cfg(
            r, lambda c: c["scheduler"].update(last_epoch=payload)),
        "escaped oc.create in the optimizer": lambda r: _edit_cfg(r, lambda c: c["optimizer"].update(foreach=payload)),
        "escaped oc.create in the model": lambda r: _edit_cfg(r, lambda c: c["model"].update(dropout=payload)),
        "escaped oc.create in an observer": lambda r: _edit_cfg(r, lambda c: c.update(observers={"x": payload})),
        "escaped oc.env in the loss": lambda r: _edit_cfg(r, lambda c: c.update(loss={"name": "\\${oc.env:HOME}"})),
        "escaped custom resolver": lambda r: _edit_cfg(
            r, lambda c: c["model"].update(note="\\${nnopt_job_dir:a,b}")),
        "nested escape": lambda r: _edit_cfg(
            r, lambda c: c["scheduler"].update(last_epoch="${epochs}\\${oc.decode:\\${oc.env:HOME}}")),
        "escaped key": lambda r: _edit_cfg(r, lambda c: c["optimizer"].update({"\\${oc.env:HOME}": 1})),
        "config FIFO": lambda r: _replace(r / ".hydra" / "config.yaml", os.mkfifo),
        "50 MB config": lambda r: _replace(r / ".hydra" / "config.yaml",
                                          lambda p: open(p, "wb").truncate(50 * 2**20)),
        "config linked out of the folder": lambda r: _replace(
            r / ".hydra" / "config.yaml", lambda p: p.symlink_to(outside / "config.yaml")),
        "evals.jsonl -> /dev/zero": lambda r: (r / "evals.jsonl").symlink_to("/dev/zero"),
        "evals.jsonl linked out of the folder": lambda r: (r / "evals.jsonl").symlink_to(outside / "rows.jsonl"),
        "diagnostics.jsonl FIFO": lambda r: os.mkfifo(r / "diagnostics.jsonl"),
        "metrics.jsonl FIFO": lambda r: _replace(r / "metrics.jsonl", os.mkfifo),
    }
    out = {}
    for i, (name, edit) in enumerate(edits.items()):
        run = copy_run(good, root / "runs" / f"r{i:02d}")
        unfinished(run)
        edit(run)
        out[name] = run
    return out


@contextlib.contextmanager
def deadline(seconds: float):
    """TimeoutError if the block runs longer: a reader that hangs fails the test instead of it."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _cli(fn, argv, capsys) -> str:
    """Run an in-process command; its stderr, asserted to hold no traceback."""
    with contextlib.suppress(SystemExit):
        fn(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_every_folder_reader_refuses_or_safely_reads_every_hostile_folder(good_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    folders = hostile_folders(good_run, tmp_path, marker)
    current = compose_cfg("epochs=1", "scheduler=step")
    readers = {
        "resume": lambda r: resume_config(r, current, [f"resume={r}"]),
        "init_from": lambda r: check_transfer({**current, "init_from": str(r)}),
        "teacher_run": lambda r: load_run_model(r, (1, 32), 4),
        "tune-lr study folder": lambda r: (job_action(r, current), read_metrics(r / "metrics.jsonl")),
        "landscape": lambda r: _cli(landscape_cli.run, [str(r), "--grid", "0", "--points", "3", "--samples", "8",
                                                        "--out", str(tmp_path / "ls")], capsys),
        "landscape --to": lambda r: _cli(landscape_cli.run, [str(good_run), "--to", str(r), "--grid", "0",
                                                             "--points", "3", "--samples", "8",
                                                             "--out", str(tmp_path / "ls")], capsys),
        "export tensorboard": lambda r: _cli(export_cli.run, ["tensorboard", str(r), "--out", str(tmp_path / "tb")],
                                             capsys),
        "fuse": lambda r: _cli(fuse_cli.run, [str(good_run), str(r), "-o", str(tmp_path / "soup")], capsys),
        "compare": lambda r: _cli(compare_run, [str(r.parent), "--format", "csv"], capsys),
    }
    refused_by_resume = []
    for name, run in folders.items():
        for reader, read in readers.items():
            t0 = time.perf_counter()
            with deadline(10):
                try:
                    read(run)
                    if reader == "resume":  # it passed: the run goes on (and must run no payload)
                        train(read(run), RunContext(run, resume=True))
                except (NnoptError, ValueError, OSError) as e:
                    assert "\n" not in str(e), (name, reader, str(e))
                    if reader == "resume":
                        refused_by_resume.append(name)
            took = time.perf_counter() - t0
            assert took < (2 if "bomb" in name else 10), (name, reader, took)
            assert not marker.exists(), (name, reader)
    # resume reads and appends to every file: each hostile folder is refused before anything runs
    assert sorted(refused_by_resume) == sorted(folders)
    # the rows of a file outside the folder never became the run's
    assert all("0.99" not in (r / "metrics.jsonl").read_text() for r in folders.values()
               if (r / "metrics.jsonl").is_file() and not (r / "metrics.jsonl").is_symlink())


def test_resume_reads_the_folders_config_not_its_data_locations(good_run, tmp_path):
    run = copy_run(good_run, tmp_path / "run")
    evil = tmp_path / "evil-cache"
    _edit_cfg(run, lambda c: c["dataset"].update(root=str(evil), download=True))
    current = compose_cfg("epochs=1", "scheduler=step")
    current["dataset"]["root"] = None
    plain = resume_config(run, current, [f"resume={run}"])
    assert plain["dataset"]["root"] is None and "download" not in plain["dataset"]
    assert plain["dataset"]["n_train"] == current["dataset"]["n_train"]


def test_resume_checks_the_checkpoint_before_anything_is_built(good_run, tmp_path):
    run = copy_run(good_run, tmp_path / "run")
    (run / "summary.json").write_text(json.dumps({"status": "running"}))
    _edit_cfg(run, lambda c: c["optimizer"].update(lr=0.5))  # not the experiment the checkpoint holds
    with pytest.raises(NnoptError, match=r"different experiment.*optimizer\.lr") as e:
        resume_config(run, compose_cfg("epochs=1", "scheduler=step"), [f"resume={run}"])
    assert "\n" not in str(e.value)


def test_landscape_refuses_integer_weights_instead_of_a_flat_line(good_run, tmp_path, capsys):
    other = copy_run(good_run, tmp_path / "other")
    state = safe_load(other / "model.pt", "model")
    save_state_dict(other / "model.pt", {k: v.to(torch.int64) for k, v in state.items()})
    with pytest.raises(SystemExit) as e:
        landscape_cli.run([str(good_run), "--to", str(other), "--grid", "0", "--points", "3", "--samples", "8",
                           "--out", str(tmp_path / "ls")])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int64" in err[0] and "float32" in err[0], err
    assert not (tmp_path / "ls" / "landscape.json").exists()


def test_own_key_references_and_escapes_still_read_as_before(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\nbatch_size: {size: 64, base_size: '${.size}'}\n"
                                     "scheduler: {T_max: '${epochs}'}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg["scheduler"]["T_max"] == 3 and cfg["batch_size"]["base_size"] == 64
    (tmp_path / "d.yaml").write_text("a: '${b}'\nb: '${a}'\n")
    with pytest.raises(UntrustedFileError, match="refer to themselves"):
        load_config(tmp_path / "d.yaml")


@pytest.mark.slow
def test_cli_resume_of_an_escaped_payload_is_one_line_and_runs_nothing(good_run, tmp_path):
    from tests.conftest import run_cli

    run = copy_run(good_run, tmp_path / "run")
    unfinished(run)
    marker = tmp_path / "pwned"
    _edit_cfg(run, lambda c: c["scheduler"].update(last_epoch=create_payload(marker)))
    out = run_cli("train", f"resume={run}", cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1 and "escaped interpolation" in lines[0], out.stderr
    assert not marker.exists() and json.loads((run / "summary.json").read_text())["status"] == "running"
