"""Every experiment preset (conf/experiment/*.yaml) composes, and every run of its sweep is a valid config."""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nnopt_cli.config import conf_dir
from nnopt_cli.run.validate import validate
from tests.conftest import TINY, compose_cfg

PRESETS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def sweep_params(preset: str) -> dict[str, list[str]]:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="train", overrides=[f"+experiment={preset}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert cfg.hydra.sweep.dir.startswith(f"outputs/experiment/{preset}/")
    return {k: str(v).split(",") for k, v in params.items()}


def test_the_comparisons_the_project_exists_for_have_presets():
    assert {"optimizers", "lr_schedules", "init_activation", "regularizers", "batch_sizes", "compression"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_run_of_each_preset_sweep_is_valid(preset):
    params = sweep_params(preset)
    assert params, f"{preset} sweeps nothing"
    grid = list(itertools.product(*params.values()))
    assert 2 <= len(grid) <= 16  # minutes on a laptop CPU, not hours (modern_optimizers: 16 runs)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        for values in grid:
            overrides = [f"{k}={v}" for k, v in zip(params, values, strict=True)]
            cfg = OmegaConf.to_container(compose(config_name="train", overrides=[
                *TINY, f"+experiment={preset}", *overrides]), resolve=True)
            validate(cfg)
            for k, v in zip(params, values, strict=True):
                if "." in k or k == "seed":  # a plain key: the value swept is the value run
                    node = cfg
                    for part in k.split("."):
                        node = node[part]
                    assert str(node) == v, (k, node, v)


def test_optimizers_preset_compares_the_five_optimizers_over_seeds():
    params = sweep_params("optimizers")
    assert params == {"optimizer": ["sgd", "momentum", "adagrad", "rmsprop", "adam"], "seed": ["0", "1"]}
    sgd, momentum = (compose_cfg("+experiment=optimizers", f"optimizer={o}")["optimizer"] for o in ("sgd", "momentum"))
    assert sgd["_target_"] == momentum["_target_"] == "torch.optim.SGD"
    assert sgd.get("momentum", 0.0) == 0.0 and momentum["momentum"] == 0.9  # plain SGD vs heavy-ball


def test_compression_preset_prunes_then_quantizes():
    cfg = compose_cfg("+experiment=compression", *TINY)
    assert [k for k in cfg["post"] if k != "measure"] == ["prune", "quantize"]
