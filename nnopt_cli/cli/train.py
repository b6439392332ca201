"""`nnopt train`: the Hydra application around the runner.

Hydra composes conf/train.yaml with the command-line overrides, makes the run folder and
writes .hydra/; this module turns that into a plain dict for the runner and turns errors into
one line and an exit status (single runs) or a failed job that the sweep survives (multirun).
Under torchrun (`run`) every process runs this app on one shared run folder; rank 0 writes it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Only torch-free modules here: `--help`, `--cfg job` and every config error that can be found without
# torch are answered before it is imported (the training modules are imported once the config passed)
from nnopt_cli.config import conf_dir
from nnopt_cli.config.overrides import INFO_FLAGS, check_keys, check_overrides
from nnopt_cli.errors import ConfigError, NnoptError, want_traceback
from nnopt_cli.run.continuation import continue_config, write_hydra_config
from nnopt_cli.run.job import (
    HYDRA_SUBDIR_ENV,
    SetupSignals,
    discard_unused_folder,
    keep_recorded_threads,
    link_latest,
    refuse_reuse,
    refuse_reused_run_dir,
    resume_config,
    unlink_latest,
    write_hydra_files,
)
from nnopt_cli.run.structure import check_structure
from nnopt_cli.store import layout
from nnopt_cli.store.folder import read_summary, record_failure
from nnopt_cli.store.layout import Status
from nnopt_cli.store.lock import RunLock
from nnopt_cli.sweep import compose as sweep_compose
from nnopt_cli.sweep import report as sweep
from nnopt_cli.sweep.progress import JobProgress
from nnopt_cli.training.device import available_cores, pin_threads
from nnopt_cli.training.launch import launched_by_torchrun

log = logging.getLogger("nnopt")
sweep.register_resolvers()  # ${nnopt_uid:} in hydra.run.dir / hydra.sweep.dir


# What a sweep's objective gets from a job: the run's best val/acc (the Optuna preset maximizes
# it), and for a job that failed or diverged the worst accuracy there is, so that a bad trial
# steers the search away instead of ending the study (the sweeper stops on NaN or errors).
FAILED_OBJECTIVE = 0.0


def is_rank0() -> bool:
    """Whether this process writes the run folder: always without torchrun (torch.distributed is
    imported only under torchrun), rank 0 under it."""
    if not launched_by_torchrun():
        return True
    from nnopt_cli.training import distributed

    return distributed.is_rank0()


def parallel_jobs(hc) -> int:
    """How many processes share the machine: a parallel launcher's n_jobs (joblib, parallel), or
    torchrun's processes on this node (LOCAL_WORLD_SIZE)."""
    launcher = hc.launcher
    if hc.mode == RunMode.MULTIRUN and "n_jobs" in launcher:
        n = launcher.get("n_jobs", -1) or -1
        return available_cores() if n < 0 else n
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched_by_torchrun() else 1


def _objective(summary: dict) -> float:
    v = summary.get("best/val/acc")
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else FAILED_OBJECTIVE


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
    if launched_by_torchrun():
        from nnopt_cli.training import distributed

        if distributed.world_size() > 1 and is_rank0():
            distributed.broadcast_from_rank0(str(run_dir))  # the other ranks wait for it in run()
    record = False  # whether an error is written to run_dir/summary.json (never into a folder we may not own)
    resume = False
    checked = False  # the config passed its checks (an error before: the config was refused)
    continues = False  # resume=: the folder is an earlier run's, never removed
    lock = None
    previous_latest = None  # where outputs/latest pointed before this run (put back if it is refused)
    hydra_subdir = os.environ.get(HYDRA_SUBDIR_ENV) if is_rank0() else None
    signals = SetupSignals().install()  # SIGTERM outside the training loop: an interrupt, not a silent death
    # a sweep job's place in the sweep (k/N, the sweep's ETA); every planned job ends by counting itself
    job_progress = JobProgress(hc.sweep.dir, list(hc.overrides.task), hc.job.num, parallel_jobs(hc)) \
        if multirun else None
    try:
        try:
            plain = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as e:
            raise NnoptError(f"invalid config: {getattr(e, 'full_key', '') or ''}: {str(e).splitlines()[0]}") from None
        written = cfg  # the config .hydra/config.yaml records
        if plain.get("continue_from") is not None and plain["resume"] is None:
            plain = continue_config(plain["continue_from"], plain, list(hc.overrides.task))
            written = OmegaConf.create(plain)  # the parent's config with the new total, not the defaults
            if not os.environ.get(HYDRA_SUBDIR_ENV) and hc.output_subdir and is_rank0():
                write_hydra_config(run_dir / hc.output_subdir, written)  # Hydra wrote the composed one
        continues = plain["resume"] is not None and not multirun
        if plain["resume"] is not None:
            if multirun:
                raise ConfigError("resume", plain["resume"], "one run folder; to continue a sweep, rerun it with "
                                                             "the same hydra.sweep.dir and skip_completed=true")
            if not isinstance(plain["resume"], str) or not plain["resume"]:
                raise ConfigError("resume", plain["resume"], "the path of a run folder")
            run_dir = Path(plain["resume"])
            if not run_dir.is_dir():
                raise ConfigError("resume", str(run_dir), "an existing run folder made by nnopt train")
        else:  # a bad value stops here, before the folder holds anything of a run
            check_structure(plain)  # before torch is imported: these errors are answered at once
            from nnopt_cli.run.validate import check_components

            check_components(plain)
        checked = True
        if is_rank0():  # one writer per folder; under torchrun rank 0 is the writer
            lock = RunLock(run_dir, "nnopt train " + " ".join(hc.overrides.task)).acquire()
        if plain["resume"] is not None:
            plain = resume_config(run_dir, plain, list(hc.overrides.task))
            previous = read_summary(run_dir) or {}
            if previous.get("status") == Status.COMPLETED:
                print(f"nnopt: {run_dir} has already completed; nothing to resume", file=sys.stderr)
                return _objective(previous)
            keep_recorded_threads(plain, previous)
            record, resume = True, True
        elif multirun and plain["skip_completed"]:
            action = sweep.job_action(run_dir, plain)
            if action == "skip":
                log.info("job %s: already done in %s, skipped (skip_completed=true)", hc.job.num, run_dir)
                sweep.note_job(hc.sweep.dir, run_dir.name, Status.SKIPPED, "completed by an earlier run of this sweep",
                               list(hc.overrides.task))
                job_progress.finish(trained=False)  # (found done only now: it was among the N)
                return _objective(read_summary(run_dir) or {})
            if action == "resume":
                keep_recorded_threads(plain, read_summary(run_dir) or {})
            if hydra_subdir:  # the folder's checkpoint is of this very experiment (job_action checked)
                write_hydra_files(run_dir, written, hydra_subdir)
            record, resume = True, action == "resume"
        else:
            if is_rank0():  # the writer checks; under torchrun the others may see its first files
                refuse_reuse(run_dir, multirun)
            if hydra_subdir:
                write_hydra_files(run_dir, written, hydra_subdir)
            record = True
            if not multirun and is_rank0():
                previous_latest = link_latest(run_dir)
        from nnopt_cli import data
        from nnopt_cli.run.recipe import RunContext, train
        from nnopt_cli.training import distributed

        if multirun:  # the jobs a process runs (basic launcher, a worker) prepare each dataset once
            data.share_loaded_for_this_process()
        jobs = parallel_jobs(hc)
        if multirun and jobs > 1:  # several jobs at once on one machine: one GPU each
            plain["device"] = distributed.sweep_device(plain["device"], hc.job.num)
        from nnopt_cli.training import lockstep

        # rank 0 alone shows progress; jobs running at once, or the members of a vectorized group
        # (which take turns), cannot share one live display
        live = None if is_rank0() and not (multirun and jobs > 1) and lockstep.current() is None else False
        if job_progress is not None:
            log.info("%s", job_progress.start_line())
        summary = train(plain, RunContext(run_dir=run_dir, parallel_jobs=jobs, live_progress=live, resume=resume,
                                          progress_prefix=job_progress.prefix if job_progress else "",
                                          checked=plain["resume"] is None))  # validated above
        if job_progress is not None:
            job_progress.finish(trained=True)
    except KeyboardInterrupt:  # a signal outside the training loop (which handles them itself)
        code = 128 + (signals.signum or signal.SIGINT)
        name = signal.Signals(code - 128).name
        kept = (run_dir / layout.CHECKPOINT).is_file()
        where = (f"the last checkpoint in {run_dir} is kept; continue with: nnopt train resume={run_dir}" if kept
                 else "no checkpoint was written yet")
        if record and is_rank0() and (run_dir / layout.SUMMARY).exists():
            e = NnoptError(f"interrupted by {name} outside the training loop; {where}")
            record_failure(run_dir, e, status=Status.INTERRUPTED)
        print(f"nnopt: interrupted by {name}; {where}", file=sys.stderr)
        raise SystemExit(code) from None
    except Exception as e:
        if is_rank0() and not continues and (not checked or isinstance(e, ConfigError)) and \
                discard_unused_folder(run_dir, f"{hc.job.name}.log", hydra_subdir or hc.output_subdir):
            record = False  # refused before it started: no folder that `nnopt compare` would read as a run
            unlink_latest(run_dir, previous_latest)
        status = getattr(e, "status", Status.FAILED)  # a post-training fine-tune that diverged: "diverged"
        if record and is_rank0():
            record_failure(run_dir, e, status=status)
        if want_traceback():
            raise
        first = (str(e).splitlines() or [""])[0]
        message = first if isinstance(e, NnoptError) else f"{type(e).__name__}: {first}"
        print(f"nnopt: error: {message}", file=sys.stderr)
        if multirun:
            log.error("job %s failed: %s", hc.job.num, message)
            if job_progress is not None:
                job_progress.finish(trained=False)
            # the end-of-sweep report lists it, also when the job ran in another process (joblib)
            sweep.note_job(hc.sweep.dir, run_dir.name, status, message, list(hc.overrides.task))
            return FAILED_OBJECTIVE  # the sweep goes on; the job's summary.json says failed
        if not isinstance(e, NnoptError):
            print("nnopt: the full traceback is in summary.json; set NNOPT_DEBUG=1 to print it", file=sys.stderr)
        raise SystemExit(e.exit_code if isinstance(e, NnoptError) else 1) from None
    finally:
        signals.restore()
        pin_threads(None)  # the next job of a sweep in this process chooses its own
        if lock is not None:
            lock.release()
    if summary["status"] == Status.INTERRUPTED:
        return interrupted_exit(summary, multirun, hc.sweep.dir if multirun else "")
    if summary["status"] == Status.DIVERGED:
        if not multirun:
            raise SystemExit(3)
        return FAILED_OBJECTIVE
    return summary.get("best/val/acc", FAILED_OBJECTIVE)


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


def own_hydra_subdir(args: list[str]) -> list[str]:
    """Let nnopt write .hydra/ (write_hydra_files) instead of Hydra, unless the user set
    hydra.output_subdir or only asked Hydra to print something."""
    if any(a.split("=")[0] in INFO_FLAGS for a in args) or any(
            a.lstrip("+~").startswith("hydra.output_subdir") for a in args) or int(os.environ.get("RANK", "0")):
        return args  # (under torchrun the other ranks write nothing: see `run`)
    os.environ[HYDRA_SUBDIR_ENV] = layout.HYDRA_DIR  # inherited by joblib / submitit workers
    return [*args, "hydra.output_subdir=null"]


def run(args: list[str]) -> None:
    """Run the Hydra app on `args` (everything after `nnopt train`)."""
    try:
        search = next((a for a in args if a.split("=", 1)[0].lstrip("+") == "hparams_search"), None)
        if search is not None:  # a search preset only means something to nnopt tune (Optuna)
            raise ConfigError("hparams_search", search.split("=", 1)[1], "a search preset for nnopt tune: "
                              f"nnopt tune {search} (nnopt train runs one config; -m sweeps a grid)")
        printing = [a for a in args if a.split("=")[0] in ("-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")]
        if printing and any(a in ("-m", "--multirun") for a in args):  # Hydra's answer is a traceback
            raise NnoptError(f"{printing[0]} prints one composed config and does not combine with -m/--multirun: "
                             "drop -m to see a job's config (the sweep's values as key=value)")
        if not any(a in ("-sc", "--shell-completion") for a in args):  # query=bash is no override
            check_overrides(args)
            check_keys(args)
            refuse_reused_run_dir(args)  # before Hydra opens its log file there
    except NnoptError as e:
        print(f"nnopt: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    args = own_hydra_subdir(resume_args(args))
    sys.argv = ["nnopt train", *args]
    if not launched_by_torchrun():
        try:
            with sweep_compose.mode_known(args):
                train_app()
        except KeyboardInterrupt:  # before or between jobs: nothing is half-written
            sweep.report_aborted_sweep(Status.INTERRUPTED)
            print("nnopt: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except SystemExit as e:  # Hydra's own error exit, e.g. a launcher whose worker was killed
            sweep.report_aborted_sweep(f"the launcher stopped (exit status {e.code})")
            if sweep.LAST_REPORT and e.code in (0, None):
                exit_on_failed_jobs()
            raise
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
    from nnopt_cli.training import distributed

    distributed.init_from_env()
    finished = False
    try:
        if not is_rank0():
            # ${now:...} in hydra.run.dir differs per process: take the folder rank 0's Hydra
            # made, and leave it to rank 0 alone (no .hydra/, no log file from this rank)
            run_dir = distributed.broadcast_from_rank0(None).replace("\\", "\\\\").replace("'", "\\'")
            sys.argv += [f"hydra.run.dir='{run_dir}'", "hydra.output_subdir=null", "hydra/job_logging=none",
                         "hydra/hydra_logging=none"]
        train_app()
        finished = True
    finally:
        distributed.shutdown(wait_for_peers=finished)
