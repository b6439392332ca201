"""`nnopt tune`: the command line and the trial loop (see study.py for the folder and the locks).

Each trial composes nnopt's own config (conf/train.yaml + the preset's keys + the command line's
overrides + the trial's parameters, as `nnopt train` would) and runs runner.train in this process.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from nnopt_cli.config import conf_dir
from nnopt_cli.config.overrides import check_keys, check_overrides
from nnopt_cli.errors import ConfigError, NnoptError, want_traceback
from nnopt_cli.post import stage_names
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store import layout
from nnopt_cli.store.folder import atomic_write_bytes, record_failure
from nnopt_cli.store.layout import Status
from nnopt_cli.store.outputs import out_of_space
from nnopt_cli.tune import objectives as O
from nnopt_cli.tune import pareto
from nnopt_cli.tune import study as S
from nnopt_cli.tune.pruning import JOURNAL
from nnopt_cli.tune.samplers import check_sampler, make_pruner, make_sampler, pruner_node
from nnopt_cli.tune.space import LEGACY_IGNORED, Preset, load_preset, monitor_of
from nnopt_cli.tune.study import requeue, trial_line

log = logging.getLogger("nnopt")

USAGE = """usage: nnopt tune hparams_search=<preset> [tune.<setting>=value ...] [config overrides ...]

Hyper-parameter search with Optuna (ask/tell) around nnopt's own config and runner: every trial
is an ordinary run folder under the study folder, the study a journal file next to them.

  nnopt tune hparams_search=mnist_optuna                      the preset's 20 TPE trials
  nnopt tune hparams_search=mnist_optuna tune.n_trials=12 tune.pruner=hyperband epochs=3 threads=1
  nnopt tune hparams_search=my_search.yaml tune.sampler=qmc tune.dir=outputs/tune/qmc

settings (tune.<name>=value, or in the preset's `tune:` section):
  n_trials     trials to finish (completed, pruned or failed); rerunning the command continues the
               study up to this number, and trials cut by a crash are queued again
  sampler      tpe | random | qmc | grid | cmaes | gp | nsga2   (tune.sampler.seed=0, tune.sampler.<arg>=...)
  pruner       none | median | halving | hyperband      stop trials behind the others after an epoch
  direction    maximize | minimize     objective   a summary.json number (best/val/acc)
  objectives   several at once, a Pareto front: '{quantize/test/acc: maximize, quantize/size_bytes: minimize}'
               (sampler nsga2 or tpe, pruner none; the front goes to pareto.json and pareto.png)
  monitor      the per-epoch metric pruners watch (default: val/acc for best/val/acc)
  dir          the study folder (default outputs/tune/<study_name>-<hash of the config overrides>:
               the same command continues its study, other overrides start their own)
  study_name   the study's name (default: the preset's)
  params.<key> a parameter to search: choice(a,b) | interval(lo,hi) | range(lo,hi,step) | tag(log, ...)

Several processes may work on one study at once: start the same command again (another
terminal, Slurm jobs sharing the disk). Watch it: optuna-dashboard <study folder>/study.journal
Compare its trials: nnopt compare <study folder> --sort best/val/acc
"""


def yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def compose(overrides: list[str]) -> tuple[dict, dict]:
    """The resolved config `nnopt train <overrides>` would run, and Hydra's group choices."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra")
        plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    except Exception as e:  # Hydra's composition errors are paragraphs: keep their first line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise NnoptError(f"cannot compose the trial's config ({' '.join(overrides)[-200:]}): {first[:200]}") from None
    return plain, {k: v for k, v in choices.items() if not k.startswith("hydra")}


def write_hydra_files(run_dir: Path, cfg: dict, choices: dict, overrides: list[str]) -> None:
    """.hydra/ as `nnopt train` leaves it, so that compare, resume and the loggers read a trial
    like any run (config.yaml, hydra.yaml's runtime.choices, overrides.yaml)."""
    (run_dir / layout.HYDRA_DIR).mkdir(parents=True, exist_ok=True)
    # atomic: a full disk leaves no half a config for compare or resume to read
    atomic_write_bytes(run_dir / layout.CONFIG, yaml.safe_dump(cfg, sort_keys=False).encode())
    atomic_write_bytes(run_dir / layout.HYDRA_CONFIG, yaml.safe_dump(
        {"hydra": {"runtime": {"choices": choices}, "overrides": {"task": overrides}}}, sort_keys=False).encode())
    atomic_write_bytes(run_dir / layout.OVERRIDES, yaml.safe_dump(overrides).encode())


def last_per_key(overrides: list[str]) -> list[str]:
    """The command line wins over the preset: one override per key, the last one given."""
    last = {o.split("=", 1)[0]: o for o in overrides}
    return [o for o in overrides if last[o.split("=", 1)[0]] is o]


def probe_values(preset: Preset) -> dict[str, Any]:
    """One value per parameter (each categorical's first choice, each range's low end)."""
    out = {}
    for k, p in preset.params.items():
        d = p.distribution
        out[k] = d.choices[0] if hasattr(d, "choices") else d.low
    return out


def check_before_trials(preset: Preset, base: list[str], user_overrides: list[str]) -> dict:
    """Everything that needs no data, once, before any trial: a typo costs one line, no trial."""
    searched = set(preset.params)
    for o in user_overrides:
        key = o.split("=", 1)[0].lstrip("~+")
        if key in searched:
            raise ConfigError(key, o.split("=", 1)[1], f"is searched by the preset ({preset.params[key].text}): "
                                                       f"set tune.params.{key}=... to change the range instead")
    cfg, _ = compose([*base, *preset.trial_overrides(probe_values(preset))])
    validate(cfg)
    O.check_stages(O.parse(preset.settings), stage_names(cfg), cfg["post"]["measure"]["latency_batch_sizes"]
                   if stage_names(cfg) else [])
    return cfg


def run_trial(study, trial, preset: Preset, base: list[str], settings: dict, folder, pruner_cfg: dict) -> str:
    """Train one trial in this process and tell the study how it went; returns the run's status."""
    import optuna

    params = dict(trial.params)
    overrides = [*base, *preset.trial_overrides(params)]
    run_dir = folder.run_dir(trial.number)
    t0 = time.perf_counter()
    trial.set_user_attr("run_dir", str(run_dir))
    try:
        cfg, choices = compose(overrides)
        if pruner_cfg["name"] != "none":
            cfg["observers"] = {**(cfg.get("observers") or {}), "tune": {
                "_target_": "nnopt_cli.tune.pruning.TrialPruner", "study": study.study_name,
                "monitor": monitor_of(settings), "pruner": pruner_cfg}}
        write_hydra_files(run_dir, cfg, choices, overrides)
        summary = train(cfg, RunContext(run_dir=run_dir))
    except KeyboardInterrupt:
        requeue(study, trial, folder, f"trial {trial.number} was interrupted")
        raise
    except Exception as e:
        if want_traceback():
            raise
        if out_of_space(e):  # not the trial's fault: it is not counted, and the study stops here
            message = (str(e).splitlines() or [type(e).__name__])[0]
            try:
                requeue(study, trial, folder, f"trial {trial.number} ran out of disk space", announce=False)
            except OSError:  # the journal could not take it either: the next run finds the trial's lock free
                pass
            err = NnoptError(f"trial {trial.number}: {message}; the trial was not counted: free some space "
                             "and rerun the same nnopt tune command to continue the study")
            err.exit_code = 1
            raise err from None
        run_dir.mkdir(parents=True, exist_ok=True)
        record_failure(run_dir, e)
        message = (str(e).splitlines() or [type(e).__name__])[0]
        trial.set_user_attr("status", Status.FAILED)
        trial.set_user_attr("error", message[:500])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        print(trial_line(trial, Status.FAILED, None, time.perf_counter() - t0, params) + f": {message}", flush=True)
        return Status.FAILED
    status = summary["status"]
    trial.set_user_attr("status", status)
    if status == Status.INTERRUPTED:
        requeue(study, trial, folder, f"trial {trial.number} was interrupted")
        print(f"nnopt: {summary['message']}; rerun the same nnopt tune command to continue the study",
              file=sys.stderr)
        raise SystemExit(summary.get("exit_code", 130))
    objs = O.parse(settings)
    values = [O.value_of(summary, o.name) for o in objs]
    missing = [o.name for o, v in zip(objs, values, strict=True) if v is None]
    if status == Status.COMPLETED and not missing:
        study.tell(trial, values[0] if len(values) == 1 else values)
    elif status in (Status.PRUNED, Status.DIVERGED):  # stopped early: ranked below every completed trial
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        why = summary.get("error") or f"no finite {', '.join(missing)} in summary.json (status {status})"
        trial.set_user_attr("error", str(why)[:500])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    shown = values if status == Status.COMPLETED and not missing else None
    print(trial_line(trial, status, shown, time.perf_counter() - t0, params), flush=True)
    return status


def tune(preset_name: str, tune_overrides: list[tuple[str, Any]], cfg_overrides: list[str]) -> int:
    import optuna

    preset = load_preset(preset_name, tune_overrides)
    s = preset.settings
    for note in preset.notes:
        print(f"nnopt: preset {preset.name}: {note}", file=sys.stderr)
    base = last_per_key([*preset.base, *cfg_overrides])
    cfg = check_before_trials(preset, base, cfg_overrides)
    check_sampler(s["sampler"])
    grid = preset.grid() if s["sampler"]["name"] == "grid" else None
    n_trials = s["n_trials"]
    if grid is not None:
        n_trials = min(n_trials, math.prod(len(v) for v in grid.values()))
    pruner_cfg = pruner_node(s["pruner"], cfg["epochs"])
    pruner = make_pruner(pruner_cfg)
    path = Path(s["dir"]) if s["dir"] else S.default_dir(s["study_name"], base)
    unkeyed = Path("outputs") / "tune" / s["study_name"]  # a study folder named without the overrides' hash
    if not s["dir"] and not (path / JOURNAL).exists() and (unkeyed / JOURNAL).is_file():
        print(f"nnopt: note: {unkeyed} holds a study of the same name, started without the overrides' hash in its "
              f"folder name; to continue that one instead, add tune.dir={unkeyed}", file=sys.stderr)
    folder = S.StudyFolder(path)
    objs = O.parse(s)
    identity = {"space": {k: p.text for k, p in preset.params.items()}, "base": base,
                "objective": s["objective"] if len(objs) == 1 else [o.name for o in objs]}
    with folder.locked():
        study = S.open_study(folder, s, pruner, identity, objs)
    print(f"study {s['study_name']} in {folder.path}: {n_trials} trials, sampler {s['sampler']['name']}, "
          f"pruner {pruner_cfg['name']}, {O.describe(objs)}\n"
          f"  watch it: optuna-dashboard {folder.journal}", flush=True)
    mine: set[int] = set()
    while True:
        with folder.locked():
            S.recover_dead(study, folder, mine)
            trials = study.get_trials(deepcopy=False)
            c = S.finished_counts(trials)
            if c["completed"] + c["pruned"] + c["failed"] + c["running"] >= n_trials:
                break
            study.sampler = make_sampler(s["sampler"], len(trials), grid)
            trial = study.ask(preset.distributions)
            if grid is not None:  # GridSampler's tell of the last point calls study.stop(), an error outside optimize()
                study.sampler = optuna.samplers.RandomSampler()
            lock = folder.claim(trial.number)
            mine.add(trial.number)
        try:
            run_trial(study, trial, preset, base, s, folder, pruner_cfg)
        finally:
            lock.close()
            mine.discard(trial.number)
    c = S.finished_counts(study.get_trials(deepcopy=False))
    print(f"study {s['study_name']}: {c['completed']} completed, {c['pruned']} pruned, {c['failed']} failed"
          + (f", {c['running']} still running elsewhere" if c["running"] else "")
          + (f" ({c['requeued']} cut short and redone)" if c["requeued"] else ""))
    if len(objs) > 1:
        return report_front(study, objs, preset, base, folder, c)
    best = S.best_record(study, preset, base, s["objective"], folder)
    if best is None:
        print("nnopt: error: no trial completed; see the failed trials' summary.json", file=sys.stderr)
        return 1
    S.write_best(folder, best)
    params = " ".join(preset.trial_overrides(best["best_params"]))
    print(f"best trial {best['best_trial']}: {s['objective']}={best['best_value']:.4f}  {params}\n"
          f"  run folder {best['run_dir']}; written to {folder.path / 'best.yaml'}\n"
          f"  retrain: {best['retrain']}")
    return 0


def report_front(study, objs: list[O.Objective], preset: Preset, base: list[str], folder, counts: dict) -> int:
    """A multi-objective study's result: its Pareto front as a table, pareto.json, pareto.png."""
    from nnopt_cli.compare import pareto as front_view
    from nnopt_cli.compare.render import render

    rec = pareto.record(study, objs, preset, base, folder, counts)
    if rec is None:
        print("nnopt: error: no trial completed; see the failed trials' summary.json", file=sys.stderr)
        return 1
    pareto.write(folder, rec)
    front, _ = front_view.read(folder.path)
    print(front.title())
    sys.stdout.flush()
    render(front_view.table(front), "table")
    drawn = f"plotted in {folder.path / layout.PARETO_PLOT}" if rec["plot"] else rec["plot_note"]
    print(f"  written to {folder.path / layout.PARETO}; {drawn}\n"
          f"  retrain a front member: the `retrain` command of its entry in {layout.PARETO}")
    return 0


def parse_args(args: list[str]) -> tuple[str, list[tuple[str, Any]], list[str]]:
    preset, tune_overrides, cfg_overrides = None, [], []
    for a in args:
        if a.startswith("-") or "=" not in a:
            raise NnoptError(f"unexpected argument {a!r}: nnopt tune takes key=value arguments (nnopt tune --help)")
        key, value = a.split("=", 1)
        if key == "hparams_search":
            preset = value
        elif key.startswith("tune."):
            tune_overrides.append((key[len("tune."):], yaml_value(value)))
        elif key.startswith("hydra.sweeper."):  # a command written for hydra-optuna-sweeper
            name = key[len("hydra.sweeper."):]
            if name not in LEGACY_IGNORED:
                tune_overrides.append((name, yaml_value(value)))
        elif key.startswith(("hydra.", "hydra/")):
            raise ConfigError(key, value, "nnopt tune runs its trials itself: Hydra's launcher and sweeper "
                                          "settings do not apply (start more nnopt tune processes instead)")
        else:
            cfg_overrides.append(a)
    if preset is None:
        options = ", ".join(sorted(p.stem for p in (conf_dir() / "hparams_search").glob("*.yaml")))
        raise NnoptError(f"nnopt tune needs hparams_search=<preset> (conf/hparams_search: {options}) "
                         "or hparams_search=path/to/preset.yaml")
    return preset, tune_overrides, cfg_overrides


def run(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        raise SystemExit(0 if args else 2)
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("nnopt: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
    try:
        preset, tune_overrides, cfg_overrides = parse_args(args)
        check_overrides(cfg_overrides)
        check_keys(cfg_overrides)
        code = tune(preset, tune_overrides, cfg_overrides)
    except NnoptError as e:
        print(f"nnopt: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        print("nnopt: interrupted; rerun the same command to continue the study", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as e:  # the study folder itself cannot be written (a full disk, a read-only folder)
        if want_traceback():
            raise
        print(f"nnopt: error: {e.filename or 'the study folder'}: {e.strerror or e}; rerun the same command to "
              "continue the study", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)
