"""`nnopt train`: the Hydra application around the runner.

Hydra composes conf/train.yaml with the command-line overrides, makes the run folder and
writes .hydra/; this module turns that into a plain dict for the runner and turns errors into
one line and an exit status (single runs) or a failed job that the sweep survives (multirun).
Under torchrun (`run`) every process runs this app on one shared run folder; rank 0 writes it.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nnopt_cli import distributed, sweep
from nnopt_cli.checkpoint import NON_EXPERIMENT_KEYS
from nnopt_cli.config import conf_dir
from nnopt_cli.device import available_cores
from nnopt_cli.errors import ConfigError, NnoptError, want_traceback
from nnopt_cli.run_dir import RunDirError, write_json
from nnopt_cli.runner import RunContext, train

log = logging.getLogger("nnopt")
sweep.register_resolvers()  # ${nnopt_uid:} in hydra.run.dir / hydra.sweep.dir


# What a sweep's objective gets from a job: the run's best val/acc (the Optuna preset maximizes
# it), and for a job that failed or diverged the worst accuracy there is, so that a bad trial
# steers the search away instead of ending the study (the sweeper stops on NaN or errors).
FAILED_OBJECTIVE = 0.0


def parallel_jobs(hc) -> int:
    """How many processes share the machine: the joblib launcher's n_jobs, or torchrun's
    processes on this node (LOCAL_WORLD_SIZE)."""
    launcher = hc.launcher
    if hc.mode == RunMode.MULTIRUN and "Joblib" in str(launcher.get("_target_", "")):
        n = launcher.get("n_jobs", -1) or -1
        return available_cores() if n < 0 else n
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if distributed.launched_by_torchrun() else 1


def record_failure(run_dir: Path, exc: BaseException, status: str = "failed") -> None:
    """Keep what the run wrote so far and mark it failed, with the reason, in summary.json."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        summary = {}
    summary.update(status=status, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if not isinstance(exc, NnoptError):
        summary["traceback"] = "".join(traceback.format_exception(exc))
    write_json(path, summary)


def _lookup(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<missing>"
        node = node[part]
    return node


def _short(v) -> str:
    if isinstance(v, dict):
        v = v.get("name", v.get("_target_", v))
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def resume_config(run_dir: Path, current: dict, overrides: list[str]) -> dict:
    """The run's own config (<run>/.hydra/config.yaml), refusing overrides that would change it.

    `current` is what this invocation composed (defaults + `overrides`): an override is fine
    when it gives the value the run already has, or touches a key that does not change what
    the run computes (NON_EXPERIMENT_KEYS). Top-level keys added to nnopt since the run was
    made come from `current`.
    """
    path = run_dir / ".hydra" / "config.yaml"
    if not run_dir.is_dir():
        raise ConfigError("resume", str(run_dir), "an existing run folder made by nnopt train")
    if not path.is_file():
        raise RunDirError(f"{path} is missing: {run_dir} is not a run folder made by nnopt train")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if not isinstance(saved, dict):
            raise ValueError("not a mapping")
    except Exception as e:  # yaml.YAMLError, OmegaConf errors, ValueError
        first = (str(e).splitlines() or [""])[0]
        raise RunDirError(f"{path} is corrupt ({type(e).__name__}: {first[:120]})") from None
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("~+").split("@")[0].replace("/", ".")
        if key.split(".")[0] in NON_EXPERIMENT_KEYS:
            continue
        old, new = _lookup(saved, key), _lookup(current, key)
        if old != new:
            raise ConfigError("resume", str(run_dir), f"the override {o} would change the experiment (the run has "
                                                      f"{key}={_short(old)}); a resumed run keeps its own config: "
                                                      "drop the override, or start a new run")
    for k, v in current.items():
        if k not in saved or k in NON_EXPERIMENT_KEYS:
            saved[k] = v
    return saved


def interrupted_exit(summary: dict, multirun: bool, sweep_dir: str) -> float:
    """Exit 130 / 143 after an interrupt; a joblib worker returns instead (its parent is interrupted too)."""
    print(f"nnopt: {summary['message']}", file=sys.stderr)
    if multirun:
        print(f"nnopt: to finish the sweep, rerun the same command with hydra.sweep.dir={sweep_dir} "
              "skip_completed=true", file=sys.stderr)
    if multirun and multiprocessing.parent_process() is not None:
        return FAILED_OBJECTIVE
    raise SystemExit(summary["exit_code"])


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="train")
def train_app(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if distributed.world_size() > 1 and distributed.is_rank0():
        distributed.broadcast_from_rank0(str(run_dir))  # the other ranks wait for it in run()
    record = True  # whether an error is written to run_dir/summary.json (never into a folder we may not own)
    try:
        try:
            plain = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as e:
            raise NnoptError(f"invalid config: {getattr(e, 'full_key', '') or ''}: {str(e).splitlines()[0]}") from None
        resume = False
        if plain["resume"] is not None:
            record = False
            if multirun:
                raise ConfigError("resume", plain["resume"], "one run folder; to continue a sweep, rerun it with "
                                                             "the same hydra.sweep.dir and skip_completed=true")
            run_dir = Path(plain["resume"])
            plain = resume_config(run_dir, plain, list(hc.overrides.task))
            previous = sweep.read_summary(run_dir) or {}
            if previous.get("status") == "completed":
                print(f"nnopt: {run_dir} has already completed; nothing to resume", file=sys.stderr)
                return previous.get("best/val/acc", FAILED_OBJECTIVE)
            record, resume = True, True
        elif multirun and plain["skip_completed"]:
            record = False
            action = sweep.job_action(run_dir, plain)
            if action == "skip":
                log.info("job %s: already done in %s, skipped (skip_completed=true)", hc.job.num, run_dir)
                return (sweep.read_summary(run_dir) or {}).get("best/val/acc", FAILED_OBJECTIVE)
            record, resume = True, action == "resume"
        jobs = parallel_jobs(hc)
        if multirun and jobs > 1:  # several jobs at once on one machine: one GPU each
            plain["device"] = distributed.sweep_device(plain["device"], hc.job.num)
        live = None if distributed.is_rank0() else False  # rank 0 alone shows progress
        summary = train(plain, RunContext(run_dir=run_dir, parallel_jobs=jobs, live_progress=live, resume=resume))
    except KeyboardInterrupt as e:  # Ctrl-C outside the training loop (which handles it itself)
        if record and distributed.is_rank0() and (run_dir / "summary.json").exists():
            record_failure(run_dir, e, status="interrupted")
        print(f"nnopt: interrupted; the last checkpoint in {run_dir} is kept", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:
        if record and distributed.is_rank0():
            record_failure(run_dir, e)
        if want_traceback():
            raise
        first = (str(e).splitlines() or [""])[0]
        message = first if isinstance(e, NnoptError) else f"{type(e).__name__}: {first}"
        print(f"nnopt: error: {message}", file=sys.stderr)
        if multirun:
            log.error("job %s failed: %s", hc.job.num, message)
            sweep.JOB_ERRORS[str(hc.job.num)] = message  # the end-of-sweep report lists it
            return FAILED_OBJECTIVE  # the sweep goes on; the job's summary.json says failed
        if not isinstance(e, NnoptError):
            print("nnopt: the full traceback is in summary.json; set NNOPT_DEBUG=1 to print it", file=sys.stderr)
        raise SystemExit(e.exit_code if isinstance(e, NnoptError) else 1) from None
    if summary["status"] == "interrupted":
        return interrupted_exit(summary, multirun, hc.sweep.dir if multirun else "")
    if summary["status"] == "diverged":
        if not multirun:
            raise SystemExit(3)
        return FAILED_OBJECTIVE
    return summary.get("best/val/acc", FAILED_OBJECTIVE)


# flags with which Hydra prints something and exits without running the job
INFO_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")


@functools.cache
def group_options() -> dict[str, tuple[list[str], bool]]:
    """Each config group -> (its options, whether `group=null` is allowed: its default is null)."""
    root = conf_dir()
    null_default = set()
    for entry in OmegaConf.load(root / "train.yaml").get("defaults", []):
        if isinstance(entry, (dict, DictConfig)):
            null_default |= {str(k) for k, v in entry.items() if v is None}
    return {str(d.relative_to(root)): (sorted(f.stem for f in d.glob("*.yaml")), str(d.relative_to(root)) in null_default)
            for d in root.rglob("*") if d.is_dir() and any(d.glob("*.yaml"))}


def check_overrides(args: list[str]) -> None:
    """Catch unparsable overrides and unknown group options before Hydra does: one line
    (key, value, what is allowed) instead of Hydra's multi-line report, and no run folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, groups = OverridesParser.create(), None
    for a in args:
        if a.startswith("-") or "=" not in a:  # flags and their values (-m, --cfg job, -cn train)
            continue
        try:
            override = parser.parse_override(a)
        except HydraException as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise NnoptError(f"cannot parse the override {a!r}: {first[:150]}") from None
        key = override.key_or_group
        if key.startswith("hydra") or override.package is not None or override.is_delete():
            continue
        groups = groups if groups is not None else group_options()
        if key not in groups:
            continue
        options, null_ok = groups[key]
        if override.is_sweep_override():
            if not override.is_choice_sweep():
                continue  # range / interval / glob: Hydra expands and checks them
            values = list(override.sweep_string_iterator())
        else:
            value = override.value()
            values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None and null_ok:
                continue
            if not isinstance(v, str) or v not in options:
                raise ConfigError(key, v, "one of " + ", ".join(options) + (" or null" if null_ok else ""))


def check_keys(args: list[str]) -> None:
    """An override of a key the config does not have (`optimizer.lrr=0.1`, `foo=1`): one line
    naming the key and the keys that do exist there, instead of Hydra's multi-line report.

    Composes the config once with the overrides (a sweep's first value for each swept key);
    any other composition problem is left to Hydra to report as it does."""
    import re

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    parser, plain = OverridesParser.create(), []
    for a in args:
        if a.startswith("-") or "=" not in a:
            continue
        o = parser.parse_override(a)  # check_overrides has parsed every one already
        if o.key_or_group.startswith("hydra"):
            continue
        if o.is_sweep_override():
            if not o.is_choice_sweep():
                continue
            a = f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
        plain.append(a)

    def compose_with(overrides: list[str]):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            return compose(config_name="train", overrides=overrides)

    try:
        compose_with(plain)
    except ConfigCompositionException as e:
        m = re.match(r"Could not override '([^']+)'", str(e))
        if m is None:
            return
        key = m.group(1)
        given = next((a for a in plain if a.split("=", 1)[0] == key), f"{key}=...")
        parent, _, _ = key.rpartition(".")
        try:
            node = compose_with([a for a in plain if a != given])
            node = OmegaConf.select(node, parent) if parent else node
            known = ", ".join(sorted(map(str, node.keys()))) if isinstance(node, DictConfig) else ""
        except Exception:
            known = ""
        where = f"keys of {parent}" if parent else "top-level keys"
        raise ConfigError(key, given.split("=", 1)[1], f"no such key ({where}: {known or '?'}); "
                                                       f"to add a new key write +{given}") from None
    except Exception:
        return


def resume_args(args: list[str]) -> list[str]:
    """`resume=<run folder>` (single run): Hydra runs in that folder and leaves its .hydra/ as it is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a in ("-m", "--multirun") for a in args) or int(os.environ.get("RANK", "0")) != 0:
        return args
    for a in args:
        if a.startswith("resume="):
            folder = OverridesParser.create().parse_override(a).value()
            if isinstance(folder, str):
                quoted = folder.replace("\\", "\\\\").replace("'", "\\'")
                return [*args, f"hydra.run.dir='{quoted}'", "hydra.output_subdir=null"]
    return args


def exit_on_failed_jobs() -> None:
    report = sweep.LAST_REPORT
    if report and report["failed"]:
        print(f"nnopt: error: {report['failed']} of {len(report['jobs'])} sweep job(s) failed; "
              f"see {report['sweep_dir']}/report.json", file=sys.stderr)
        raise SystemExit(1)


def run(args: list[str]) -> None:
    """Run the Hydra app on `args` (everything after `nnopt train`)."""
    try:
        check_overrides(args)
        check_keys(args)
    except NnoptError as e:
        print(f"nnopt: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    args = resume_args(args)
    sys.argv = ["nnopt train", *args]
    if not distributed.launched_by_torchrun():
        try:
            train_app()
        except KeyboardInterrupt:  # before or between jobs: nothing is half-written
            print("nnopt: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        exit_on_failed_jobs()
        return
    # under torchrun: N processes run the same job; the process group spans the whole run
    if any(a in ("-m", "--multirun") for a in args):
        print("nnopt: error: --multirun does not combine with torchrun; start one torchrun per run, or "
              "sweep with hydra/launcher=submitit_slurm", file=sys.stderr)
        raise SystemExit(2)
    if any(a.split("=")[0] in INFO_FLAGS for a in args):
        if int(os.environ.get("RANK", "0")) == 0:
            train_app()
        return
    distributed.init_from_env()
    finished = False
    try:
        if not distributed.is_rank0():
            # ${now:...} in hydra.run.dir differs per process: take the folder rank 0's Hydra
            # made, and leave it to rank 0 alone (no .hydra/, no log file from this rank)
            run_dir = distributed.broadcast_from_rank0(None).replace("\\", "\\\\").replace("'", "\\'")
            sys.argv += [f"hydra.run.dir='{run_dir}'", "hydra.output_subdir=null", "hydra/job_logging=none",
                         "hydra/hydra_logging=none"]
        train_app()
        finished = True
    finally:
        distributed.shutdown(wait_for_peers=finished)
