"""continue_from: a new run from a completed run's final checkpoint, trained to N epochs in total."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from nnopt_cli.errors import ConfigError
from nnopt_cli.run.continuation import continue_config
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store.checkpoint import CheckpointError, config_fingerprint, load_checkpoint
from nnopt_cli.store.folder import RunDirError, read_metrics
from nnopt_cli.store.targets import UntrustedTargetError
from tests.conftest import TINY, compose_cfg, run_cli
from tests.run.test_resume import Crash, assert_same_run, crash_after

# schedules and states that do not depend on the run's length: continuing equals training from scratch
EXACT = {
    "none": ["scheduler=none"],
    "exp": ["scheduler=exp", "optimizer=momentum"],
    "ema-dropout-random-batches": ["averaging=ema", "averaging.decay=0.9", "model.dropout=0.3", "batch_size=random",
                                   "batch_size.min_size=16", "batch_size.max_size=96"],
}


def finish(cfg: dict, run: Path) -> dict:
    """Train `cfg` in `run` and record its config where `nnopt train` does (.hydra/config.yaml)."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return train(cfg, RunContext(run))


def continued(parent: Path, *overrides: str) -> dict:
    """The config `nnopt train continue_from=<parent> <overrides>` runs."""
    args = [f"continue_from={parent}", *overrides]
    return continue_config(str(parent), compose_cfg(*args), args)


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("case", sorted(EXACT))
def test_continuing_to_n_epochs_equals_training_n_epochs_from_scratch(case, tmp_path):
    train(compose_cfg(*EXACT[case], "epochs=4"), RunContext(tmp_path / "alone"))
    parent = tmp_path / "parent"
    finish(compose_cfg(*EXACT[case], "epochs=2"), parent)

    cfg = continued(parent, *EXACT[case], "epochs=4")
    assert cfg["epochs"] == 4 and cfg["continue_from"] == str(parent.resolve())
    summary = train(cfg, RunContext(tmp_path / "child"))
    assert_same_run(tmp_path / "alone", tmp_path / "child")  # metrics, model.pt bit for bit, test numbers
    before = summary_of(parent)
    record = summary["continued_from"]
    assert record["run"] == str(parent.resolve()) and record["epochs"] == 2 and record["notes"] == []
    assert record["config_sha"] == before["config_sha"] and record["test/acc"] == before["test/acc"]
    assert summary_of(tmp_path / "child")["continued_from"] == record
    # the parent is left as it was, and its starting weights are the continued run's too
    assert summary_of(parent) == before and [r["epoch"] for r in read_metrics(parent / "metrics.jsonl")] == [1, 2]
    init_a = torch.load(tmp_path / "alone" / "model.init.pt", weights_only=True)
    init_c = torch.load(tmp_path / "child" / "model.init.pt", weights_only=True)
    assert all(torch.equal(init_a[k], init_c[k]) for k in init_a)


@pytest.mark.parametrize("cut_after", [0, 1], ids=["before-its-first-checkpoint", "after-epoch-3"])
def test_a_continued_run_cut_short_resumes_to_the_same_end(cut_after, tmp_path, monkeypatch):
    train(compose_cfg("scheduler=exp", "epochs=4"), RunContext(tmp_path / "alone"))
    parent = tmp_path / "parent"
    finish(compose_cfg("scheduler=exp", "epochs=2"), parent)
    cfg = continued(parent, "scheduler=exp", "epochs=4")
    with monkeypatch.context() as m:
        crash_after(m, cut_after)  # epochs 1-2 come from the parent: no validation runs for them
        with pytest.raises(Crash):
            train(cfg, RunContext(tmp_path / "child"))
    if cut_after:  # its own checkpoint holds everything: the parent is no longer needed
        shutil.rmtree(parent)
    summary = train(cfg, RunContext(tmp_path / "child", resume=True))
    assert summary["resumed_from_epoch"] == 2 + cut_after and summary["continued_from"]["epochs"] == 2
    assert_same_run(tmp_path / "alone", tmp_path / "child")


def test_a_schedule_planned_for_the_parents_length_keeps_its_end_state_and_says_so(tmp_path, caplog):
    parent = tmp_path / "parent"
    finish(compose_cfg("scheduler=onecycle", "epochs=2"), parent)
    final_lr = load_checkpoint(parent / "checkpoint.pt")["trainer"]["optimizer"]["param_groups"][0]["lr"]
    with caplog.at_level(logging.WARNING, logger="nnopt"):
        summary = train(continued(parent, "scheduler=onecycle", "epochs=4"), RunContext(tmp_path / "child"))
    line = ("continue_from: scheduler 'onecycle' was planned for 2 epochs; continuing to 4 epochs keeps its "
            "end state (LR stays at its final value)")
    assert [r.getMessage() for r in caplog.records if "continue_from" in r.getMessage()] == [line]
    assert summary["status"] == "completed" and summary["continued_from"]["notes"] == [line]
    rows = read_metrics(tmp_path / "child" / "metrics.jsonl")
    assert 0 < final_lr < 1e-4 and [r["lr"] for r in rows[2:]] == [final_lr, final_lr]
    assert load_checkpoint(tmp_path / "child" / "checkpoint.pt")["trainer"]["scheduler"] is None


def test_a_schedule_that_ended_at_lr_0_is_refused(tmp_path):
    parent = tmp_path / "parent"
    finish(compose_cfg("scheduler=cosine", "epochs=2"), parent)
    with pytest.raises(ConfigError, match=r"continue_from=.*ended at LR 0, so the added epochs would not change "
                                          r"the weights\); .*init_from="):
        continued(parent, "epochs=4")


# ---------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed 2-epoch run (the refusal tests copy it before changing it)."""
    run = tmp_path_factory.mktemp("parent") / "run"
    finish(compose_cfg("epochs=2"), run)
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "parent")
    return tmp_path / "parent"


def test_refuses_a_total_that_is_not_larger_or_not_given(finished):
    for n in (1, 2):
        with pytest.raises(ConfigError, match=rf"epochs={n}: more than the 2 epochs of .*in total"):
            continued(finished, f"epochs={n}")
    with pytest.raises(ConfigError, match=r"epochs=2: given with continue_from: the total to train to"):
        continue_config(str(finished), compose_cfg(f"continue_from={finished}"), [f"continue_from={finished}"])


def test_refuses_overrides_that_change_the_experiment(finished):
    with pytest.raises(ConfigError, match=r"override optimizer=sgd would change the experiment .*init_from="):
        continued(finished, "epochs=3", "optimizer=sgd")
    with pytest.raises(ConfigError, match=r"override model.hidden=\[32\] would change"):
        continued(finished, "epochs=3", "model.hidden=[32]")
    cfg = continued(finished, "epochs=3", "checkpoint.every=2", "seed=0")  # how it is driven, or the same value
    assert cfg["checkpoint"]["every"] == 2 and cfg["epochs"] == 3


def test_refuses_what_is_not_a_completed_run_folder(finished, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"a run folder made by nnopt train \(.*config.yaml is missing\)"):
        continued(tmp_path / "empty", "epochs=3")
    with pytest.raises(ConfigError, match=r"not found"):
        continued(tmp_path / "nowhere", "epochs=3")
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        crash_after(m, 1)
        with pytest.raises(Crash):
            finish(compose_cfg("epochs=2"), cut)
    with pytest.raises(ConfigError, match=r"a completed run \(its status is running\); continue it in its own "
                                          r"folder with resume="):
        continued(cut, "epochs=3")


def test_refuses_a_run_that_kept_no_checkpoint(tmp_path):
    parent = tmp_path / "parent"
    finish(compose_cfg("epochs=2", "checkpoint.every=0"), parent)  # completed, no checkpoint.pt
    assert summary_of(parent)["status"] == "completed" and not (parent / "checkpoint.pt").exists()
    with pytest.raises(ConfigError, match=r"kept no checkpoint.pt: checkpoint.keep=none or checkpoint.every=0"):
        continued(parent, "epochs=3", "checkpoint.every=0")


def test_refuses_a_run_that_early_stopping_ended(tmp_path):
    parent = tmp_path / "parent"
    stop = ["early_stopping.enabled=true", "early_stopping.patience=1", "early_stopping.min_delta=100"]
    summary = finish(compose_cfg("epochs=4", *stop), parent)
    assert summary["stop_reason"] == "early_stopping" and summary["epochs"] == 2
    with pytest.raises(ConfigError, match=r"stopped at epoch 2 by early_stopping\); .*init_from="):
        continued(parent, "epochs=6", *stop)


def test_an_untrusted_config_builds_nothing_it_names(finished, tmp_path):
    parent = copy_of(finished, tmp_path)
    path = parent / ".hydra" / "config.yaml"
    text = path.read_text()
    path.write_text(text.replace("torch.optim.Adam", "os.system"))
    with pytest.raises(UntrustedTargetError, match=r"refused to build optimizer._target_=os.system"):
        continued(parent, "epochs=3")
    path.write_text(text.replace('"synthetic"', '"${oc.env:HOME}"'))
    with pytest.raises(RunDirError, match=r"calls the resolver 'oc.env'"):
        continued(parent, "epochs=3")


class Payload:
    """Would create a file if unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_an_untrusted_checkpoint_is_never_unpickled(finished, tmp_path):
    parent = copy_of(finished, tmp_path)
    ckpt = parent / "checkpoint.pt"
    cfg = continued(parent, "epochs=3")
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 differs"):
        train(cfg, RunContext(tmp_path / "child1"))
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "payload": Payload(marker)}, ckpt)
    os.remove(ckpt.with_name("checkpoint.pt.sha256"))  # no checksum to catch it: weights_only must
    with pytest.raises(CheckpointError, match=r"refused to load checkpoint .*could run code"):
        train(cfg, RunContext(tmp_path / "child2"))
    assert not marker.exists()


@pytest.mark.slow
def test_cli_continues_into_a_new_folder_and_refuses_in_one_line(tmp_path):
    tiny = [t for t in TINY if not t.startswith("epochs=")]
    done = run_cli("train", *tiny, "epochs=1", "hydra.run.dir=parent", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = run_cli("train", "continue_from=parent", "epochs=2", "hydra.run.dir=child", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    child = tmp_path / "child"
    config = (child / ".hydra" / "config.yaml").read_text()  # the parent's config, not the defaults
    assert "epochs: 2" in config and "name: synthetic" in config and f"continue_from: {tmp_path / 'parent'}" in config
    assert [r["epoch"] for r in read_metrics(child / "metrics.jsonl")] == [1, 2]
    assert summary_of(child)["continued_from"]["epochs"] == 1

    refused = run_cli("train", "continue_from=parent", "epochs=1", "hydra.run.dir=again", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "nnopt: error: invalid config: epochs=1: more than the 1 epochs of parent (continue_from trains to "
        "this many epochs in total)"]


def test_folders_written_before_continue_from_keep_their_fingerprint():
    cfg = compose_cfg()
    assert cfg["continue_from"] is None
    old = {k: v for k, v in cfg.items() if k != "continue_from"}
    assert config_fingerprint(old) == config_fingerprint(cfg)
    assert config_fingerprint({**cfg, "continue_from": "/runs/a"}) != config_fingerprint(cfg)
