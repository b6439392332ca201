"""nnopt tune's Optuna parts on their own: presets (today's and the old sweeper's) -> Optuna
distributions and overrides, samplers and pruners by name, and the pruning observer against a
study in a journal file."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nnopt_cli.config import conf_dir
from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.training.observers import EpochInfo, RunInfo, StopRun
from nnopt_cli.tune import samplers
from nnopt_cli.tune.pruning import JOURNAL, TrialPruner, journal_storage
from nnopt_cli.tune.space import Param, load_preset, monitor_of, override_text, parse_param
from tests.conftest import compose_cfg

# conf/hparams_search/mnist_optuna.yaml as it was written for hydra-optuna-sweeper (before nnopt tune)
OLD_PRESET = """\
# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: tpe

epochs: 5

hydra:
  sweeper:
    direction: maximize
    study_name: mnist_optuna
    storage: null
    n_trials: 20
    n_jobs: 1
    max_failure_rate: 0.0
    sampler:
      seed: 0
      n_startup_trials: 5
    params:
      optimizer: choice(sgd, momentum, adam, adamw)
      optimizer.lr: tag(log, interval(1e-4, 3e-1))
      optimizer.weight_decay: tag(log, interval(1e-6, 1e-2))
      scheduler: choice(none, cosine, step)
"""

MNIST_SPACE = {
    "optimizer": CategoricalDistribution(["sgd", "momentum", "adam", "adamw"]),
    "optimizer.lr": FloatDistribution(1e-4, 0.3, log=True),
    "optimizer.weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    "scheduler": CategoricalDistribution(["none", "cosine", "step"]),
}


def test_shipped_preset_searches_real_options():
    preset = load_preset("mnist_optuna")
    assert preset.distributions == MNIST_SPACE
    for group in ("optimizer", "scheduler"):  # every choice is an option of that config group
        for name in preset.params[group].distribution.choices:
            assert (conf_dir() / group / f"{name}.yaml").exists(), (group, name)
    s = preset.settings
    assert (s["direction"], s["objective"], s["n_trials"], s["study_name"]) == ("maximize", "best/val/acc", 20,
                                                                                 "mnist_optuna")
    assert s["sampler"] == {"name": "tpe", "seed": 0, "n_startup_trials": 5} and s["pruner"]["name"] == "median"
    assert preset.base == ["epochs=5"]


def test_preset_written_for_the_old_sweeper_still_reads(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_PRESET)
    preset = load_preset(str(path), [("n_trials", 3), ("sampler", "random")])
    assert preset.distributions == MNIST_SPACE and preset.base == ["epochs=5"]
    assert preset.settings["n_trials"] == 3 and preset.settings["sampler"] == {"name": "random", "seed": 0}
    assert preset.settings["study_name"] == "mnist_optuna" and preset.settings["direction"] == "maximize"
    assert any(n.startswith("n_jobs ignored") for n in preset.notes)
    assert any(n.startswith("storage ignored") for n in preset.notes)
    assert load_preset(str(path)).settings["sampler"] == {"name": "tpe", "seed": 0, "n_startup_trials": 5}


@pytest.mark.parametrize("text, dist", [
    ("choice(a, b)", CategoricalDistribution(["a", "b"])),
    ("choice(0.05, 1, true)", CategoricalDistribution([0.05, 1, True])),
    ("interval(0.1, 1)", FloatDistribution(0.1, 1.0)),
    ("tag(log, interval(1e-3, 1))", FloatDistribution(1e-3, 1.0, log=True)),
    ("tag(int, interval(2, 10))", IntDistribution(2, 10)),
    ("tag(int, log, interval(1, 64))", IntDistribution(1, 64, log=True)),
    ("range(32, 257, 32)", IntDistribution(32, 256, step=32)),  # Hydra's range stops before its end
    ("choice([64], [128, 64])", CategoricalDistribution(["[64]", "[128,64]"])),
])
def test_sweep_syntax_to_distribution(text, dist):
    p = parse_param("model.hidden", text)
    assert isinstance(p, Param) and p.distribution == dist


def test_fixed_value_in_params_is_a_plain_override():
    assert parse_param("epochs", "3") == "epochs=3" and parse_param("epochs", 3) == "epochs=3"


@pytest.mark.parametrize("text", ["interval(1, 0)", "tag(log, interval(0, 1))", "tag(foo, interval(0, 1))",
                                  "choice(a, b", "glob(*)"])
def test_bad_search_expression_is_one_line(text):
    with pytest.raises(ConfigError) as e:
        parse_param("optimizer.lr", text)
    assert e.value.key == "tune.params.optimizer.lr" and e.value.value == text and "\n" not in str(e.value)


@pytest.mark.parametrize("value", [1e-05, 0.1, 3, -2.5, True, None, "plain", "it's a 'quoted' = value",
                                   [1, 2], float("inf")])
def test_override_text_parses_back_to_the_value(value):
    parsed = OverridesParser.create().parse_override(f"key={override_text(value)}").value()
    assert parsed == value


def test_trial_overrides_compose_to_the_sampled_values():
    preset = load_preset("mnist_optuna", [("params.model.hidden", "choice([64], [32, 16])")])
    values = {"optimizer": "adamw", "optimizer.lr": 0.0123, "optimizer.weight_decay": 1e-5,
              "scheduler": "cosine", "model.hidden": "[32,16]"}
    cfg = compose_cfg(*preset.trial_overrides(values))
    assert cfg["optimizer"]["_target_"] == "torch.optim.AdamW" and cfg["optimizer"]["lr"] == 0.0123
    assert cfg["optimizer"]["weight_decay"] == 1e-5 and cfg["scheduler"]["name"] == "cosine"
    assert cfg["model"]["hidden"] == [32, 16]


@pytest.mark.parametrize("key, value, match", [
    ("n_trials", 0, "tune.n_trials=0"), ("direction", "up", "tune.direction='up'"),
    ("color", "red", "tune.color='red'"), ("params", {}, "tune.params"),
])
def test_bad_settings_are_one_line(key, value, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_preset("mnist_optuna", [(key, value)])
    assert "\n" not in str(e.value)


def test_monitor_follows_the_objective():
    base = {"monitor": None}
    assert monitor_of({**base, "objective": "best/val/acc"}) == "val/acc"
    assert monitor_of({**base, "objective": "test/loss"}) == "val/loss"
    assert monitor_of({"monitor": "train/loss", "objective": "best/val/acc"}) == "train/loss"


# ---------------------------------------------------------------------------- samplers, pruners


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_every_sampler_builds_and_samples(name, tmp_path):
    grid = {"x": [0.1, 0.2]} if name == "grid" else None
    study = optuna.create_study(storage=journal_storage(tmp_path / JOURNAL))
    for i in range(3):
        study.sampler = samplers.make_sampler({"name": name, "seed": 0}, i, grid)
        assert type(study.sampler) is samplers.SAMPLERS[name]
        t = study.ask({"x": FloatDistribution(0.1, 0.2) if grid is None else CategoricalDistribution([0.1, 0.2])})
        if name == "grid":  # as nnopt tune does: the grid's own tell of its last point stops optimize()
            study.sampler = optuna.samplers.RandomSampler()
        study.tell(t, t.params["x"] ** 2)
    assert len(study.get_trials()) == 3


def test_sampler_streams_differ_per_trial_and_repeat_per_seed():
    dist = {"x": FloatDistribution(0, 1)}

    def first_draw(offset, seed=0):
        study = optuna.create_study(sampler=samplers.make_sampler({"name": "random", "seed": seed}, offset))
        return study.ask(dist).params["x"]

    assert first_draw(0) == first_draw(0)  # a fresh study is reproducible
    assert first_draw(1) != first_draw(0)  # a continued study (or a second process) draws anew
    assert first_draw(0, seed=1) == first_draw(1, seed=0)  # the stream is seed + trial number


def test_sampler_needing_a_missing_package_is_one_line(monkeypatch):
    real = samplers.importlib.util.find_spec
    monkeypatch.setattr(samplers.importlib.util, "find_spec", lambda n: None if n == "cmaes" else real(n))
    with pytest.raises(ConfigError) as e:
        samplers.make_sampler({"name": "cmaes"}, 0)
    assert str(e.value) == "invalid config: tune.sampler.name='cmaes': needs the cmaes package(s): pip install cmaes"


@pytest.mark.parametrize("node, key", [({"name": "tpe", "n_startup": 3}, "tune.sampler.n_startup"),
                                       ({"name": "annealing"}, "tune.sampler.name")])
def test_bad_sampler_settings_name_the_key(node, key):
    with pytest.raises(ConfigError) as e:
        samplers.make_sampler(node, 0)
    assert e.value.key == key and "\n" not in str(e.value)


def test_pruners_by_name_and_hyperband_steps_are_epochs():
    assert type(samplers.make_pruner({"name": "halving"})) is optuna.pruners.SuccessiveHalvingPruner
    node = samplers.pruner_node({"name": "hyperband"}, epochs=9)
    assert node == {"name": "hyperband", "max_resource": 9}
    assert type(samplers.make_pruner(node)) is optuna.pruners.HyperbandPruner
    with pytest.raises(ConfigError, match="tune.pruner.patience"):
        samplers.make_pruner({"name": "median", "patience": 2})


# ---------------------------------------------------------------------------- the pruning observer


def epoch(n, value):
    return EpochInfo(epoch=n, row={"epoch": n, "val/acc": value}, model=None, optimizer=None, step=10 * n)


def start(pruner, study_dir, number):
    pruner.on_run_start(RunInfo(cfg={}, run_dir=study_dir / str(number), model=None, optimizer=None,
                                train_x=None, train_y=None))


def test_pruner_observer_reports_each_epoch_and_stops_a_trial_below_the_median(tmp_path):
    storage = journal_storage(tmp_path / JOURNAL)
    node = {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                pruner=samplers.make_pruner(node))
    finished = [[0.80, 0.90], [0.70, 0.95]]  # val/acc per epoch of two completed trials
    for curve in finished:
        t = study.ask()
        for e, v in enumerate(curve, start=1):
            t.report(v, e)
        study.tell(t, max(curve))

    good = TrialPruner(study="s", monitor="val/acc", pruner=node)
    study.ask()
    start(good, tmp_path, 2)
    good.on_epoch_end(epoch(1, 0.76))  # above the median of (0.80, 0.70) = 0.75: goes on
    bad = TrialPruner(study="s", monitor="val/acc", pruner=node)
    study.ask()
    start(bad, tmp_path, 3)
    assert statistics.median([c[0] for c in finished]) > 0.74
    with pytest.raises(StopRun) as stop:
        bad.on_epoch_end(epoch(1, 0.74))
    assert stop.value.status == "pruned" and "trial 3" in str(stop.value) and "val/acc=0.74" in str(stop.value)
    # the reports are in the journal, as a fresh reader of the file sees them
    again = optuna.load_study(study_name="s", storage=journal_storage(tmp_path / JOURNAL))
    assert again.trials[2].intermediate_values == {1: 0.76}
    assert again.trials[3].intermediate_values == {1: 0.74}


def test_pruner_observer_ignores_missing_and_non_finite_values_and_finished_trials(tmp_path):
    study = optuna.create_study(study_name="s", storage=journal_storage(tmp_path / JOURNAL))
    node = {"name": "median", "n_startup_trials": 0}
    t = study.ask()
    p = TrialPruner(study="s", monitor="val/acc", pruner=node)
    start(p, tmp_path, 0)
    p.on_epoch_end(EpochInfo(epoch=1, row={"epoch": 1}, model=None, optimizer=None, step=1))
    p.on_epoch_end(epoch(2, math.nan))
    study.tell(t, 0.5)
    done = TrialPruner(study="s", monitor="val/acc", pruner=node)
    start(done, tmp_path, 0)
    done.on_epoch_end(epoch(3, 0.1))  # a finished trial: nothing reported, nothing raised
    assert study.trials[0].intermediate_values == {}
    with pytest.raises(NnoptError, match="not a trial folder"):
        TrialPruner(study="s", monitor="val/acc", pruner=node).on_run_start(
            RunInfo(cfg={}, run_dir=tmp_path / "run", model=None, optimizer=None, train_x=None, train_y=None))
