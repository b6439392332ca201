"""A search preset (conf/hparams_search/<name>.yaml) -> study settings, Optuna distributions and
the Hydra overrides of each trial.

Parameters are written in Hydra's sweep syntax, parsed by Hydra's own override parser (what
hydra-optuna-sweeper read, so presets written for it keep working):

    optimizer: choice(sgd, momentum, adam)          categorical (a group's options, or any values)
    optimizer.lr: tag(log, interval(1e-4, 0.3))     float, log-uniform
    epochs: tag(int, interval(2, 10))               int, uniform (add `log` for log-uniform)
    batch_size.size: range(32, 257, 32)             int with a step (the end is excluded, as in Hydra)
    model.hidden: choice([128], [256, 128])         lists too: the trial passes the override text

Settings sit under `tune:`, or under `hydra.sweeper:` in a preset written for the old sweeper
(same names: direction, study_name, n_trials, sampler, params). Every other top-level key of
the preset is a config value for every trial (`epochs: 5`), and `defaults: [override /optimizer:
adam]` picks a group's option for every trial.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnopt_cli.config import conf_dir
from nnopt_cli.config.checks import need_choice, need_int
from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.tune import objectives

DEFAULTS: dict[str, Any] = {
    "n_trials": 20,               # trials to finish (completed, pruned or failed); a rerun continues to it
    "direction": "maximize",      # maximize | minimize the objective
    "objective": "best/val/acc",  # a number of each run's summary.json
    "objectives": None,           # several at once: [{name: ..., direction: ...}, ...] (objectives.py)
    "monitor": None,              # the per-epoch metric pruners watch; null = from the objective (val/acc)
    "study_name": None,           # null = the preset's name
    "dir": None,                  # the study folder; null = outputs/tune/<study_name>-<hash of the overrides>
    "sampler": {"name": "tpe", "seed": 0},
    "pruner": {"name": "none"},
    "params": {},
}
# hydra-optuna-sweeper settings that have no meaning here, and why
LEGACY_IGNORED = {"n_jobs": "start several `nnopt tune` processes on one study instead",
                  "storage": "the study is always a journal file in the study folder",
                  "max_failure_rate": "failed trials are recorded and the study goes on",
                  "_target_": None, "search_space": None, "custom_search_space": None}
SAMPLER_CLASSES = {"TPESampler": "tpe", "RandomSampler": "random", "QMCSampler": "qmc", "GridSampler": "grid",
                   "CmaEsSampler": "cmaes", "GPSampler": "gp", "NSGAIISampler": "nsga2"}
MULTI_OBJECTIVE_SAMPLERS = ("nsga2", "tpe", "random", "qmc", "grid", "gp")  # cmaes optimizes one objective
SPACE_SYNTAX = "choice(...), interval(a, b), range(a, b, step), or tag(log|int, ...) of one of them"
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")


def override_text(v: Any) -> str:
    """A value as Hydra override text: 0.001, true, null, 'a string', [1,2], {a:1}."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(override_text(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{override_text(x)}" for k, x in v.items()) + "}"
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_group(key: str) -> bool:
    return "." not in key and (conf_dir() / key).is_dir()


@dataclass
class Param:
    key: str
    distribution: Any  # an optuna distribution
    text: str          # as written in the preset
    as_text: bool = False  # categorical of lists/dicts: the choices are their override text

    def override(self, value: Any) -> str:
        if self.as_text or (is_group(self.key) and isinstance(value, str) and _PLAIN.fullmatch(value)):
            return f"{self.key}={value}"
        return f"{self.key}={override_text(value)}"

    def grid(self) -> list:
        from optuna.distributions import CategoricalDistribution, IntDistribution

        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return list(d.choices)
        if isinstance(d, IntDistribution) and not d.log:
            return list(range(d.low, d.high + 1, d.step))
        raise ConfigError(f"tune.params.{self.key}", self.text, "sampler=grid needs choice(...) or range(...)")


def parse_param(key: str, text: Any) -> Param | str:
    """A Param for a sweep expression, or the plain override for a fixed value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    where = f"tune.params.{key}"
    if not isinstance(text, str):
        return f"{key}={override_text(text)}"
    try:
        o = OverridesParser.create().parse_override(f"{key}={text}")
        v = o.value()
        if not o.is_sweep_override():
            return f"{key}={text}"
        tags = set(v.tags)
        if tags - {"log", "int"}:
            raise ValueError(f"unknown tag(s) {', '.join(sorted(tags - {'log', 'int'}))}")
        if isinstance(v, ChoiceSweep):
            choices = list(v.list)
            plain = all(c is None or isinstance(c, (bool, int, float, str)) for c in choices)
            texts = choices if plain else [override_text(c) for c in choices]
            return Param(key, CategoricalDistribution(texts), text, as_text=not plain)
        if isinstance(v, IntervalSweep):
            if "int" in tags:
                return Param(key, IntDistribution(int(v.start), int(v.end), log="log" in tags), text)
            return Param(key, FloatDistribution(float(v.start), float(v.end), log="log" in tags), text)
        if isinstance(v, RangeSweep):
            values = list(o.sweep_iterator())
            if all(isinstance(x, int) for x in values) and len(values) > 1:
                return Param(key, IntDistribution(values[0], values[-1], step=values[1] - values[0]), text)
            return Param(key, CategoricalDistribution(values), text)
        raise ValueError(f"{type(v).__name__} is not searchable")
    except Exception as e:  # Hydra's parse errors, optuna's ValueError on bad bounds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(where, text, f"{SPACE_SYNTAX} ({first[:120]})") from None


def flat_overrides(node: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        if isinstance(v, dict) and v:
            out += flat_overrides(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={override_text(v)}")
    return out


def set_dotted(node: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[leaf] = value


@dataclass
class Preset:
    name: str
    settings: dict[str, Any]
    params: dict[str, Param] = field(default_factory=dict)
    base: list[str] = field(default_factory=list)  # overrides every trial gets (the preset's own keys)
    notes: list[str] = field(default_factory=list)

    @property
    def distributions(self) -> dict[str, Any]:
        return {k: p.distribution for k, p in self.params.items()}

    def trial_overrides(self, values: dict[str, Any]) -> list[str]:
        return [self.params[k].override(v) for k, v in values.items() if k in self.params]

    def grid(self) -> dict[str, list]:
        return {k: p.grid() for k, p in self.params.items()}


def preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    found = conf_dir() / "hparams_search" / f"{name}.yaml"
    if not found.is_file():
        options = ", ".join(sorted(p.stem for p in (conf_dir() / "hparams_search").glob("*.yaml")))
        raise ConfigError("hparams_search", name, f"one of {options}, or the path of a preset .yaml file")
    return found


def _apply(settings: dict, key: str, value: Any) -> None:
    """One setting; `sampler=random` / `pruner=median` keep only the seed of the node they replace."""
    if key in ("sampler", "pruner") and isinstance(value, str):
        seed = settings[key].get("seed") if isinstance(settings.get(key), dict) else None
        settings[key] = {"name": value, **({"seed": seed} if seed is not None else {})}
        return
    if key.startswith("params."):  # keys of params are dotted config keys: never split them
        settings["params"][key[len("params."):]] = value
        return
    set_dotted(settings, key, value)


def load_preset(name: str, overrides: list[tuple[str, Any]] = ()) -> Preset:
    """Read a preset and apply `tune.<key>=value` overrides ((key, parsed value) pairs)."""
    path = preset_path(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise NnoptError(f"cannot read the preset {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise NnoptError(f"the preset {path} is not a mapping")
    raw = copy.deepcopy(raw)
    settings = copy.deepcopy(DEFAULTS)
    notes: list[str] = []
    base: list[str] = []
    for entry in raw.pop("defaults", None) or []:
        if isinstance(entry, dict):
            for k, v in entry.items():
                group = str(k).removeprefix("override").strip().lstrip("/")
                if group.startswith("hydra/sweeper/sampler") and isinstance(v, str):
                    settings["sampler"]["name"] = v
                elif not group.startswith("hydra"):
                    base.append(f"{group.replace('/', '.')}={v}")
    legacy = (raw.pop("hydra", None) or {}).get("sweeper") or {}
    section = {**legacy, **(raw.pop("tune", None) or {})}
    for key, value in section.items():
        if key in LEGACY_IGNORED:
            if LEGACY_IGNORED[key]:
                notes.append(f"{key} ignored: {LEGACY_IGNORED[key]}")
            continue
        if key == "sampler" and isinstance(value, dict):
            value = dict(value)
            target = str(value.pop("_target_", "")).rsplit(".", 1)[-1]
            settings["sampler"].update({"name": SAMPLER_CLASSES.get(target, settings["sampler"]["name"]), **value})
            continue
        if key in ("sampler", "pruner") and isinstance(value, str):  # `pruner: none`, as on the command line
            _apply(settings, key, value)
            continue
        if key in ("sampler", "pruner", "params") and isinstance(value, dict):
            settings[key] = {**settings[key], **value} if key != "params" else dict(value)
            continue
        settings[key] = value
    for key, value in overrides:
        _apply(settings, key, value)
    one_or_many(settings, {k for k, v in section.items() if v is not None},
                {k.split(".", 1)[0] for k, v in overrides if v is not None})
    base += flat_overrides(raw)  # epochs: 5 and the like
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"tune.{unknown[0]}", settings[unknown[0]], "one of the tune settings: " + ", ".join(DEFAULTS))
    check_settings(settings)
    preset = Preset(name=path.stem, settings=settings, base=base, notes=notes)
    for key, text in settings["params"].items():
        p = parse_param(str(key), text)
        if isinstance(p, Param):
            preset.params[str(key)] = p
        else:
            preset.base.append(p)
    if not preset.params:
        raise ConfigError("tune.params", settings["params"], f"at least one parameter to search: {SPACE_SYNTAX}")
    settings["study_name"] = settings["study_name"] or preset.name
    return preset


def one_or_many(settings: dict, in_preset: set[str], on_command_line: set[str]) -> None:
    """tune.objectives or tune.objective/direction (called with the command line's values applied):
    both in one place is refused; the command line's choice replaces the preset's
    (`tune.objectives=...` on the command line of a one-objective preset)."""
    single = {"objective", "direction"}
    for keys, where in ((in_preset, "the preset"), (on_command_line, "the command line")):
        if "objectives" in keys and keys & single:
            both = "/".join(sorted(keys & single))
            raise ConfigError("tune.objectives", settings["objectives"],
                              f"either tune.objectives or tune.{both} ({where} gives both)")
    if "objectives" in on_command_line:
        settings["objective"], settings["direction"] = DEFAULTS["objective"], DEFAULTS["direction"]
    elif on_command_line & single:
        settings["objectives"] = None


def check_settings(s: dict) -> None:
    need_int("tune.n_trials", s["n_trials"], 1)
    need_choice("tune.direction", s["direction"], ("maximize", "minimize"))
    for key in ("objective", "study_name", "dir", "monitor"):
        if s[key] is not None and not isinstance(s[key], str):
            raise ConfigError(f"tune.{key}", s[key], "a string")
    for key in ("sampler", "pruner"):
        if not isinstance(s[key], dict) or not isinstance(s[key].get("name"), str):
            raise ConfigError(f"tune.{key}", s[key], f"a name (tune.{key}=NAME) or a node with `name:` and settings")
    if not isinstance(s["params"], dict):
        raise ConfigError("tune.params", s["params"], f"a mapping of config keys to {SPACE_SYNTAX}")
    if len(objectives.parse(s)) > 1:
        if s["pruner"]["name"] != "none":
            raise ConfigError("tune.pruner", s["pruner"]["name"], "none with tune.objectives: Optuna does not prune "
                                                                  "multi-objective studies (set tune.pruner=none)")
        if s["sampler"]["name"] not in MULTI_OBJECTIVE_SAMPLERS:
            raise ConfigError("tune.sampler.name", s["sampler"]["name"], "one of " + ", ".join(MULTI_OBJECTIVE_SAMPLERS)
                              + " with tune.objectives (it optimizes one objective)")


def monitor_of(settings: dict) -> str:
    """The per-epoch metric the pruner watches: given, or the objective's per-epoch twin."""
    if settings["monitor"]:
        return settings["monitor"]
    obj = settings["objective"].removeprefix("best/")
    return "val/" + obj.split("/", 1)[1] if obj.startswith("test/") else obj
