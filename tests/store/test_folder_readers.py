"""Every reader of a run folder against a corpus of hostile folders: escaped interpolations that
would run code if anything resolved a folder's value twice, interpolation bombs, FIFOs, links to
/dev/zero or out of the folder, huge files. Each is refused in one line or read safely, none hangs,
and no payload ever writes its marker file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from nnopt_cli.run.job import resume_config
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store.untrusted import UntrustedFileError, load_config
from tests.conftest import compose_cfg


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A real finished run folder (1 tiny epoch, step scheduler) with its .hydra/config.yaml."""
    run = tmp_path_factory.mktemp("good") / "run"
    cfg = compose_cfg("epochs=1", "scheduler=step")
    train(cfg, RunContext(run))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).write_bytes(f.read_bytes())
    return dst


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
