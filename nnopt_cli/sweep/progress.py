"""A sweep's progress: each job says which job of how many it is, and when the sweep should end.

    job 3/8 optimizer=adam,seed=1: sweep eta 2m10s (2 of 8 jobs done, 32s each, 2 at once)

`SweepProgress` (hydra.callbacks in conf/train.yaml) writes the plan at the start of a multirun:
the jobs that will run, in order, by their identity (job_dirs.identity: the same whatever
hydra.sweep.subdir names the folders). With skip_completed=true the jobs already done in the sweep
folder are left out, so k/N and the ETA count what runs. Each job ends by adding how long it took to
the sweep's totals; the ETA is the mean time of the finished jobs x the jobs not finished / the jobs
running at once.
Plan and times are files under <sweep dir>/.nnopt-jobs/progress/ (read by every launcher's
processes: in-process, forked, joblib), never in a run folder. Under a sweeper plugin whose jobs
are not known in advance a job says `job k` and the mean time of the jobs finished so far.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nnopt_cli.store.folder import read_summary, write_json
from nnopt_cli.sweep import job_dirs
from nnopt_cli.sweep.report import DONE, JOB_NOTES
from nnopt_cli.training.progress import duration

log = logging.getLogger("nnopt")

PROGRESS = "progress"  # <sweep dir>/.nnopt-jobs/progress/: the plan and the finished jobs' totals
PLAN = "plan.json"
TOTALS = "finished.json"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def job_key(overrides: list[str]) -> str:
    """A job's identity as one string, as in its folder name: dataset=mnist1d,optimizer=adam,seed=1."""
    try:
        ident = job_dirs.identity(overrides)
    except Exception:
        ident = tuple(str(o) for o in overrides)
    return ",".join(ident) or job_dirs.DEFAULTS


def labels(jobs: list[list[str]]) -> list[str]:
    """What tells each job apart from the others of the sweep (optimizer=adam,seed=1): its
    overrides without those every job shares."""
    idents = []
    for job in jobs:
        try:
            idents.append(job_dirs.identity(job))
        except Exception:
            idents.append(tuple(str(o) for o in job))
    shared = set.intersection(*(set(i) for i in idents)) if len(idents) > 1 else set()
    return [",".join(o for o in ident if o not in shared) for ident in idents]


def progress_dir(sweep_dir: str | Path) -> Path:
    return Path(str(sweep_dir)) / JOB_NOTES / PROGRESS


def grid(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides in the order the basic sweeper launches them; None for other sweepers."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def already_done(config: DictConfig, jobs: list[list[str]]) -> set[int]:
    """With skip_completed=true and folders named by nnopt_job_dir: the jobs whose folder holds a
    finished run (they are skipped, so they are not counted)."""
    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if not config.get("skip_completed") or "nnopt_job_dir" not in str(subdir):
        return set()
    sweep_dir = Path(str(config.hydra.sweep.dir))
    done = set()
    for i, job in enumerate(jobs):
        summary = read_summary(sweep_dir / job_dirs.job_dir(job, sweep_dir))
        if summary is not None and summary.get("status") in DONE:
            done.add(i)
    return done


def write_plan(config: DictConfig) -> None:
    folder = progress_dir(config.hydra.sweep.dir)
    shutil.rmtree(folder, ignore_errors=True)  # an earlier multirun's times in this sweep folder
    jobs = grid(config)
    plan: dict[str, Any] = {"jobs": None}
    if jobs is not None:
        skipped = already_done(config, jobs)
        kept = [i for i in range(len(jobs)) if i not in skipped]
        names = labels(jobs)  # over the whole grid: a skipped job still tells the others apart
        plan = {"jobs": [job_key(jobs[i]) for i in kept], "labels": [names[i] for i in kept],
                "skipped": len(skipped)}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / PLAN, plan)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes()[:1 << 24])
    except (OSError, ValueError):
        return None


def finished_times(sweep_dir: str | Path) -> tuple[int, int, float]:
    """(jobs finished, jobs among them that trained, their summed seconds): a job refused at once
    tells nothing of how long the others take."""
    rec = _read_json(progress_dir(sweep_dir) / TOTALS)
    if not isinstance(rec, dict):
        return 0, 0, 0.0
    values = [rec.get(k) for k in ("finished", "trained", "seconds")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return 0, 0, 0.0
    return int(values[0]), int(values[1]), float(values[2])


def add_finished(sweep_dir: str | Path, seconds: float, trained: bool) -> None:
    """Add one finished job to the sweep's totals, under a lock: jobs of a parallel sweep end at once.
    One small file, so a job's start line costs the same in a sweep of 10 or 10,000 jobs."""
    folder = progress_dir(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / TOTALS, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        try:
            rec = json.loads(f.read() or "{}")
        except ValueError:  # a job killed mid-write: the counts start again
            rec = {}
        rec = rec if isinstance(rec, dict) else {}
        n, t, s = (rec.get(k, 0) for k in ("finished", "trained", "seconds"))
        rec = {"finished": n + 1, "trained": t + int(trained), "seconds": s + (seconds if trained else 0.0)}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(rec))
        f.flush()


def sweep_eta(total: int | None, finished: int, trained: int, seconds: float, workers: int) -> str:
    """The sweep's ETA: the mean time of the jobs that trained x the rounds of jobs left."""
    each = seconds / trained if trained else None
    if total is None:
        return f"{finished} job(s) done" + (f", {duration(each)} each" if each is not None else "")
    if each is None:
        return f"sweep eta after the first job ends ({finished} of {total} jobs done)"
    left = max(total - finished, 0)
    at_once = max(1, min(workers, left))
    eta = each * math.ceil(left / at_once)
    return (f"sweep eta {duration(eta)} ({finished} of {total} jobs done, {duration(each)} each"
            + (f", {at_once} at once)" if at_once > 1 else ")"))


@dataclass
class Plan:
    index: dict[str, int]  # job key -> its place among the jobs that run
    labels: list[str]


# plan file -> (its version, plan): the jobs one process runs (basic launcher) read it once
_PLANS: dict[str, tuple[tuple[int, int, int], Plan | None]] = {}


def read_plan(sweep_dir: str | Path) -> Plan | None:
    path = progress_dir(sweep_dir) / PLAN
    try:
        st = path.stat()
    except OSError:
        return None
    version = (st.st_ino, st.st_mtime_ns, st.st_size)  # each multirun writes a new file
    cached = _PLANS.get(str(path))
    if cached is not None and cached[0] == version:
        return cached[1]
    raw = _read_json(path)
    jobs = raw.get("jobs") if isinstance(raw, dict) else None
    names = raw.get("labels") if isinstance(raw, dict) else None
    plan = None
    if isinstance(jobs, list):
        names = names if isinstance(names, list) and len(names) == len(jobs) else jobs
        index: dict[str, int] = {}
        for i, key in enumerate(jobs):
            index.setdefault(str(key), i)
        plan = Plan(index, [str(n) for n in names])
    _PLANS[str(path)] = (version, plan)
    return plan


class JobProgress:
    """One sweep job's place in the sweep: its prefix for progress lines and its start line."""

    def __init__(self, sweep_dir: str | Path, overrides: list[str], job_num: int, workers: int = 1):
        self.sweep_dir, self.workers = sweep_dir, workers
        self.key = self.label = job_key(overrides)
        plan = read_plan(sweep_dir)
        self.has_plan = plan is not None  # the sweeper's jobs were known at the start
        self.planned = plan is not None and self.key in plan.index  # counted in N (not found done at the start)
        if self.planned:
            self.k, self.total = plan.index[self.key] + 1, len(plan.labels)
            self.label = plan.labels[self.k - 1]
        else:  # a sweeper without a grid known in advance, or a job found done at the start
            self.k, self.total = job_num + 1, None
        self.started = time.perf_counter()

    @property
    def prefix(self) -> str:
        """[job 3/8 optimizer=adam,seed=1]: which job a progress line of a parallel sweep is from."""
        return f"[{self.name}]"

    @property
    def name(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        return f"job {self.k}{of} {self.label}".rstrip()

    def start_line(self) -> str:
        return f"{self.name}: {sweep_eta(self.total, *finished_times(self.sweep_dir), self.workers)}"

    def finish(self, trained: bool) -> None:
        """Record this job's time for the ETA of the jobs after it; never fails the job. A job the
        plan left out (found done at the start) is not among the N, so not among those finished."""
        if self.has_plan and not self.planned:
            return
        try:
            add_finished(self.sweep_dir, time.perf_counter() - self.started, trained)
        except OSError as e:
            log.debug("could not record the time of job %s (%s)", self.label, e)


class SweepProgress(Callback):
    """Hydra callback: at the start of a multirun, write which jobs will run (see the module doc)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            write_plan(config)
        except Exception as e:  # progress lines must never cost the sweep
            log.warning("no sweep progress: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
