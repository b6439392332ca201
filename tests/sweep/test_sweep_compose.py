"""A sweep job's config composed once per structure equals Hydra's own composition of that job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra._internal.hydra import Hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nnopt_cli.cli.main import main
from nnopt_cli.config import conf_dir
from nnopt_cli.sweep.compose import JobConfigs
from tests.conftest import TINY

# each list is one sweep, in the order its jobs are composed: later jobs reuse earlier structures
SWEEPS = [
    [["seed=0"], ["seed=1"], ["seed=2"]],
    [["optimizer=sgd", "optimizer.lr=0.1"], ["optimizer=sgd", "optimizer.lr=0.3"],
     ["optimizer=adam", "optimizer.lr=0.1"], ["optimizer=adam", "optimizer.lr=0.01"]],
    [["freeze=[0,2]", "epochs=2"], ["freeze=[1]", "epochs=3"], ["freeze=null", "epochs=4"]],
    [["init_from='a b'"], ["init_from=null"], ["init_from=${seed}"]],  # quoted, null, interpolation
    [["+observers.x._target_=m.A", "seed=1"], ["+observers.x._target_=m.B", "seed=2"]],  # additions
    [["~early_stopping", "seed=1"], ["~early_stopping", "seed=2"]],  # deletions
    [["early_stopping={enabled:true}"], ["early_stopping={patience:9}"]],  # dict values merge
    [["hydra.job.chdir=true", "seed=1"], ["hydra.job.chdir=false", "seed=1"]],
    [["seed=1", "epochs=2"], ["epochs=2", "seed=1"]],  # the same keys in another order
    [["model=cnn", "model.channels=[4,8]"], ["model=cnn", "model.channels=[2]"]],
]


@pytest.fixture
def loader():
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        yield GlobalHydra.instance().config_loader()


def master(loader, sweep_dir: str = "sw"):
    return loader.load_configuration("train", [f"hydra.sweep.dir={sweep_dir}"], RunMode.MULTIRUN)


@pytest.mark.parametrize("jobs", SWEEPS, ids=[" ".join(s[0]) for s in SWEEPS])
def test_each_job_config_is_what_hydra_composes(loader, jobs):
    fast, m = JobConfigs(loader), master(loader)
    for job in jobs:
        got = OmegaConf.to_yaml(fast.load_sweep_config(m, job))
        assert got == OmegaConf.to_yaml(loader.load_sweep_config(m, job)), job


def test_structures_are_composed_once_and_copies_stay_apart(loader, monkeypatch):
    fast, m = JobConfigs(loader), master(loader)
    composed = []
    real = loader.load_sweep_config
    monkeypatch.setattr(loader, "load_sweep_config", lambda mc, o: composed.append(o) or real(mc, o))
    first = fast.load_sweep_config(m, ["seed=0", "optimizer.lr=0.1"])
    first.optimizer.lr = 99.0  # a job that changes its config changes only its own
    first.dataset.name = "changed"
    for seed in range(1, 6):
        cfg = fast.load_sweep_config(m, [f"seed={seed}", "optimizer.lr=0.2"])
        assert (cfg.seed, cfg.optimizer.lr, cfg.dataset.name) == (seed, 0.2, "mnist")
    fast.load_sweep_config(m, ["seed=0", "optimizer=sgd"])
    assert composed == [["seed=0", "optimizer.lr=0.1"], ["seed=0", "optimizer=sgd"]]


def test_the_wrapper_travels_to_workers_without_its_cache(loader):
    import pickle

    fast = JobConfigs(loader)
    fast.load_sweep_config(master(loader), ["seed=0"])
    copy = pickle.loads(pickle.dumps(fast))
    assert copy.templates == {} and len(fast.templates) == 1
    assert OmegaConf.to_yaml(copy.load_sweep_config(master(loader), ["seed=3"])) == \
        OmegaConf.to_yaml(loader.load_sweep_config(master(loader), ["seed=3"]))


def test_hydras_mode_probe_is_skipped_unless_the_command_line_could_set_hydra_mode(tmp_path, monkeypatch):
    """Hydra's get_mode composes the whole config only to read hydra.mode; nnopt skips that
    composition when the answer is known (unset) and keeps it when an override could set it."""
    compose = Hydra.compose_config
    composed: list[str] = []

    def counted(self, *args, **kwargs):
        composed.append(run)
        return compose(self, *args, **kwargs)

    monkeypatch.setattr(Hydra, "compose_config", counted)
    monkeypatch.chdir(tmp_path)
    for run, extra in (("known", []), ("probed", ["hydra.mode=RUN"])):
        main(["train", *TINY, "epochs=1", f"hydra.run.dir={run}", *extra])
        assert json.loads((tmp_path / run / "summary.json").read_text())["status"] == "completed"
    assert composed.count("probed") == composed.count("known") + 1


def test_no_config_nnopt_ships_sets_hydra_mode():
    """What lets nnopt skip Hydra's mode probe (sweep_compose.mode_known): no YAML file sets hydra.mode,
    neither as hydra.mode in a config nor as `mode` in a config of a hydra/ group."""
    files = [*conf_dir().rglob("*.yaml"), *Path(__file__).parents[2].joinpath("hydra_plugins").rglob("*.yaml")]
    assert len(files) > 50
    for f in files:
        node = OmegaConf.load(f)
        hydra_node = node.get("hydra") if isinstance(node, DictConfig) else None
        assert not (isinstance(hydra_node, DictConfig) and "mode" in hydra_node), f
        if "hydra" in f.relative_to(f.parents[2]).parts[:-1]:
            assert "mode" not in node, f
