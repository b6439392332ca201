"""Samplers and pruners of `nnopt tune`, by name: Optuna's own classes, built from a settings node
(`tune.sampler: {name: tpe, seed: 0, n_startup_trials: 5}`) with one-line errors.

    sampler  tpe | random | qmc (quasi-random Sobol/Halton, needs scipy) | grid (every point of
             choice/range parameters) | cmaes (needs the cmaes package) | gp (Gaussian process,
             needs torch and scipy) | nsga2 (the genetic NSGA-II, for several objectives)
    pruner   none | median | halving (successive halving) | hyperband
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import optuna

from nnopt_cli.config.checks import need_int
from nnopt_cli.errors import ConfigError

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "qmc": optuna.samplers.QMCSampler,
    "grid": optuna.samplers.GridSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
}
# packages a sampler imports only when it samples: checked up front so a study fails in one line
NEEDS = {"qmc": ("scipy",), "cmaes": ("cmaes",), "gp": ("torch", "scipy")}
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}


def _build(key: str, registry: dict, node: dict, **given: Any):
    name = node.get("name")
    if name not in registry:
        raise ConfigError(f"{key}.name", name, "one of " + ", ".join(registry))
    cls = registry[name]
    kwargs = {**{k: v for k, v in node.items() if k != "name"}, **given}
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError:
        takes = [p for p in inspect.signature(cls).parameters if p not in given]
        bad = sorted(set(kwargs) - set(inspect.signature(cls).parameters))
        raise ConfigError(f"{key}.{bad[0] if bad else 'name'}", node, f"{cls.__name__} takes: {', '.join(takes)}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(key, node, f"{cls.__name__}: {(str(e).splitlines() or [''])[0][:150]}") from None


def check_sampler(node: dict) -> None:
    name = node.get("name")
    if name not in SAMPLERS:
        raise ConfigError("tune.sampler.name", name, "one of " + ", ".join(SAMPLERS))
    seed = node.get("seed")
    if seed is not None:  # numpy's RandomState, which the samplers seed, takes < 2**32 (plus one per trial)
        need_int("tune.sampler.seed", seed, 0, 2**31 - 1)
    missing = [p for p in NEEDS.get(name, ()) if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError("tune.sampler.name", name, f"needs the {' and '.join(missing)} package(s): "
                                                     f"pip install {' '.join(missing)}")


def make_sampler(node: dict, offset: int, grid: dict[str, list] | None = None):
    """The sampler for the trial about to be asked.

    Its seed is `seed + offset` (offset: the number of trials the study holds), so every trial
    draws from its own stream: a rerun, or a second process on the same study, never repeats the
    draws of the first trials. QMC keeps one seed: its scrambled sequence must stay the same one.
    """
    check_sampler(node)
    node = dict(node)
    seed = node.pop("seed", 0)
    if seed is not None and node["name"] != "qmc":
        seed = int(seed) + offset
    extra: dict[str, Any] = {"seed": seed}
    if node["name"] == "grid":
        extra["search_space"] = grid
    return _build("tune.sampler", SAMPLERS, node, **extra)


def pruner_node(node: dict, epochs: int) -> dict:
    """The pruner's settings with what depends on the run filled in (Hyperband's max_resource =
    the epochs of a trial: one pruner step per epoch), so every process builds the same pruner."""
    node = dict(node)
    if node.get("name") == "hyperband" and node.get("max_resource", "auto") == "auto":
        node["max_resource"] = epochs
    return node


def make_pruner(node: dict):
    return _build("tune.pruner", PRUNERS, node)
