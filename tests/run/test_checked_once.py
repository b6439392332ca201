"""A run's config is validated once: by the runner itself, unless its caller already did
(`nnopt train` checks before it sets up the folder and says so with RunContext.checked)."""

from __future__ import annotations

import json

import pytest

from nnopt_cli.errors import ConfigError
from nnopt_cli.run import recipe
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store import layout
from tests.conftest import compose_cfg


def test_the_runner_checks_a_config_nobody_checked(tmp_path):
    cfg = compose_cfg("epochs=1")
    cfg["optimizer"]["lr"] = -1.0
    with pytest.raises(ConfigError, match="optimizer.lr"):
        train(cfg, RunContext(tmp_path / "run"))
    assert not (tmp_path / "run" / layout.METRICS).exists()


def test_a_checked_config_is_not_checked_again(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(recipe, "validate", lambda cfg: calls.append(cfg))
    summary = train(compose_cfg("epochs=1"), RunContext(tmp_path / "run", checked=True))
    assert calls == []
    assert summary["status"] == layout.Status.COMPLETED
    on_disk = json.loads((tmp_path / "run" / layout.SUMMARY).read_text())
    assert on_disk["status"] == layout.Status.COMPLETED and on_disk["test/acc"] == summary["test/acc"]
    train(compose_cfg("epochs=1"), RunContext(tmp_path / "again"))
    assert len(calls) == 1
