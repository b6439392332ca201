"""`hydra/launcher=parallel`: a sweep's jobs in worker processes forked from the sweep's process.

Why not joblib (loky): a loky worker is a fresh Python that imports torch, Hydra and nnopt again
(3-4 s here) before its first job, so on a small machine a sweep of short runs is slower in
parallel than in one process. A worker forked after the imports starts in milliseconds, inherits
the composed configs (nnopt_cli.sweep.compose), and keeps each job in its own process: a job that
corrupts memory or crashes cannot touch another job's data. The sweep's process never runs a
torch operation before forking, so no thread pool is copied half-initialized (Linux, fork).

A worker that dies (killed, out of memory) stops the sweep like joblib does: the jobs not started
are not run, and nnopt's sweep report lists what ran. Ctrl-C reaches the running jobs, which stop
at a step boundary and keep a checkpoint; jobs not started are cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

WORKER_DIED = ("nnopt: a worker process of the sweep died (killed, or out of memory); the jobs not started "
               "were not run")

# What a forked worker needs besides its job's overrides: set in the sweep's process just before
# the workers are forked, so it reaches them by fork, never by pickling. Hydra re-runs this module's
# code when it rescans its plugins (Plugins.instance() after a reset): the dict must survive that.
_SWEEP: dict[str, Any] = globals().get("_SWEEP", {})


def _ignore_sigint_between_jobs() -> None:
    """A worker leaves Ctrl-C to its job (nnopt's training loop checkpoints and stops) and to the
    sweep's process (which cancels the jobs not started): idle, it ignores it. SIGTERM gets its
    default back (the worker inherits the sweep process's handler): an idle worker the pool ends
    exits quietly, and a job installs its own handler while it runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_one(idx: int, overrides: Sequence[str]) -> JobReturn:
    if _SWEEP["stop"].is_set():  # queued before the sweep was interrupted: never started
        return JobReturn(overrides=list(overrides), status=JobStatus.FAILED,
                         _return_value=RuntimeError("not started: the sweep was interrupted"))
    # Hydra's singletons (plugins, resolvers, HydraConfig) came with the fork, as the sweep's process
    # had them: no Singleton.set_state, which would scan and re-import every plugin in each worker
    context: HydraContext = _SWEEP["context"]
    cfg = context.config_loader.load_sweep_config(_SWEEP["config"], list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
        cfg.hydra.job.num = idx
        # the jobs really running at once (n_jobs, or fewer jobs): nnopt gives each cores / that threads,
        # so a one-job sweep keeps every core; hydra.yaml records it
        cfg.hydra.launcher.n_jobs = _SWEEP["workers"]
    HydraConfig.instance().set_config(cfg)
    ret = run_job(hydra_context=context, config=cfg, task_function=_SWEEP["task"],
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    return sendable(ret)


def sendable(ret: JobReturn) -> JobReturn:
    """What goes back to the sweep's process: status and return value. The job's configs hold classes
    Hydra re-created in the worker, which pickle cannot send; the run folder has them anyway."""
    value = ret._return_value
    try:
        pickle.dumps(value)
    except Exception:
        value = RuntimeError(f"{type(value).__name__}: {value}")
    return JobReturn(overrides=ret.overrides, working_dir=ret.working_dir, task_name=ret.task_name,
                     status=ret.status, _return_value=value)


def workers(n_jobs: int, jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(jobs, cores if n_jobs is None or n_jobs < 1 else n_jobs))


class ForkLauncher(Launcher):
    def __init__(self, n_jobs: int = -1) -> None:
        self.n_jobs = n_jobs
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        if "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError("hydra/launcher=parallel needs fork (Linux, macOS); use hydra/launcher=joblib here")
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        n = workers(self.n_jobs, len(job_overrides))
        log.info(f"Launching {len(job_overrides)} jobs in {n} forked worker processes")
        for i, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
        fork = multiprocessing.get_context("fork")
        _SWEEP.update(context=self.hydra_context, config=self.config, task=self.task_function, stop=fork.Event(),
                      workers=n)
        pool = ProcessPoolExecutor(max_workers=n, mp_context=fork, initializer=_ignore_sigint_between_jobs)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM too: stop starting jobs, then exit
        futures: list = []
        try:
            futures = [pool.submit(_run_one, initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
            return [f.result() for f in futures]
        except BaseException as e:  # Ctrl-C, SIGTERM, a dead worker: no job starts from now on
            _SWEEP["stop"].set()
            if isinstance(e, KeyboardInterrupt):
                _stop_running_jobs(futures)
            if isinstance(e, BrokenProcessPool):  # the sweep report says which job; Hydra's would be a traceback
                print(WORKER_DIED, file=sys.stderr, flush=True)
                raise SystemExit(1) from None
            raise
        finally:  # the running jobs stop at a step boundary with a checkpoint (they got the signal too)
            pool.shutdown(wait=True, cancel_futures=True)
            signal.signal(signal.SIGTERM, previous)
            _SWEEP.clear()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_running_jobs(futures: list, grace_s: float = 3.0) -> None:
    """Ctrl-C in a terminal reaches every worker, a `kill` of the sweep's pid only this process: give
    the running jobs a moment to stop on their own, then pass them the interrupt (one SIGINT: a job
    stops at a step boundary and keeps a checkpoint; idle workers ignore it)."""
    wait([f for f in futures if not f.done()], timeout=grace_s)
    if any(not f.done() for f in futures):
        for child in multiprocessing.active_children():
            with contextlib.suppress(OSError):
                os.kill(child.pid, signal.SIGINT)
