"""A logger's bad setting is refused by the config checks, before any run folder is made."""

from __future__ import annotations

import pytest

from nnopt_cli.errors import NnoptError
from nnopt_cli.run.validate import validate
from tests.conftest import compose_cfg


@pytest.mark.parametrize("overrides, message", [
    (["logger=tensorboard", "logger.tensorboard.flush_secs=0"], "logger.tensorboard.flush_secs=0: an integer >= 1"),
    (["logger=[csv,mlflow]", "logger.mlflow.experiment=''"], "logger.mlflow.experiment='': an experiment name"),
    (["logger=wandb", "logger.wandb.project=''"], "logger.wandb.project='': a W&B project name"),
    (["logger=wandb", "logger.wandb.entity=''"], "logger.wandb.entity='': a W&B entity name, or null"),
    (["diagnostics=basic", "diagnostics.every=0"], "diagnostics.every=0: an integer >= 1"),
])
def test_a_bad_logger_setting_is_refused_by_validate(overrides, message):
    if any("mlflow" in o for o in overrides):
        pytest.importorskip("mlflow")
    if any("wandb" in o for o in overrides):
        pytest.importorskip("wandb")
    with pytest.raises(NnoptError) as e:
        validate(compose_cfg(*overrides))
    assert str(e.value) == f"invalid config: {message}"


@pytest.mark.slow
def test_a_bad_logger_setting_leaves_no_folder(cli, tmp_path):
    r = cli("train", "dataset=synthetic", "epochs=1", "threads=1", "logger=wandb", "logger.wandb.project=''",
            "hydra.run.dir=run")
    assert r.returncode == 2 and r.stderr == "nnopt: error: invalid config: logger.wandb.project='': a W&B project name\n"
    assert not (tmp_path / "run").exists()
