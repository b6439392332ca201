"""Shared fixtures: compose the real Hydra config, tiny synthetic data, CPU only."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nnopt_cli.config import conf_dir

REPO = Path(__file__).resolve().parents[1]

# fast defaults for every test run: synthetic data, CPU, few epochs
TINY = ["dataset=synthetic", "dataset.n_train=384", "dataset.n_test=128", "dataset.val_size=64",
        "device=cpu", "epochs=2", "batch_size.size=64", "threads=1"]


def compose_cfg(*overrides: str, tiny: bool = True) -> dict:
    """The resolved config dict `nnopt train <overrides>` would run."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="train", overrides=[*(TINY if tiny else []), *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture
def cfg_factory():
    return compose_cfg


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real `nnopt` command (python -m nnopt_cli) in a subprocess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.pop("NNOPT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "nnopt_cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(tmp_path):
    def _run(*args: str, **kw):
        return run_cli(*args, cwd=kw.pop("cwd", tmp_path), **kw)
    return _run


@pytest.fixture(autouse=True)
def datasets_not_kept_across_tests(monkeypatch):
    """An in-process sweep keeps datasets loaded for the rest of its process (the CLI's process ends
    with the sweep); in the test process each test starts without them."""
    from nnopt_cli import data

    monkeypatch.setattr(data, "_KEPT", None)
    monkeypatch.setattr(data, "_SHARED", False)


@pytest.fixture(autouse=True)
def root_logging_restored():
    """A command run in-process sets Hydra's job logging: handlers on the root logger that write to the
    test's sys.stdout (capsys's stream, closed when the test ends). Later tests get the handlers the
    process had before, not a closed stream that prints a logging error into their stderr."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
