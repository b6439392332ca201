"""Sweeps that lose nothing: unique folders, skip-completed reruns and an end-of-sweep report.

- `${nnopt_uid:}` (used in hydra.run.dir / hydra.sweep.dir) adds the pid and a random suffix to
  the time stamp, so two runs or sweeps started at the same instant never share a folder
  (Hydra issues 1607, 2925).
- `skip_completed=true` with a fixed `hydra.sweep.dir`: each job looks at its folder first
  (`job_action`): done before with the same config -> skipped; cut short with a checkpoint
  -> resumed; failed or missing -> run from scratch; another experiment's files -> refused.
- `SweepReport` (hydra.callbacks in conf/train.yaml): at the end of a multirun, one line per
  job with its status, saved to <sweep dir>/report.json; `train_app.run` exits non-zero when
  any job failed. A failing job never stops the others: train_app turns its error into a
  failed summary.json and a return value, and Hydra's launchers go on to the next job.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nnopt_cli.errors import NnoptError
from nnopt_cli.store import layout
from nnopt_cli.store.checkpoint import config_diff, config_fingerprints, load_checkpoint
from nnopt_cli.store.folder import read_summary, write_json
from nnopt_cli.store.layout import Status, experiment_config
from nnopt_cli.store.untrusted import (
    CONFIG_MAX_BYTES,
    load_yaml,
    read_text,
)
from nnopt_cli.sweep import job_dirs

log = logging.getLogger("nnopt")

DONE = (Status.COMPLETED, Status.DIVERGED)  # finished experiments: rerunning them would give the same result
OK = (*DONE, Status.SKIPPED)
LAST_REPORT: dict[str, Any] | None = None  # the report of the multirun that just ended in this process
# job folder name -> error, for jobs that failed in this process without writing their folder's summary
# (e.g. a skip_completed job refusing a folder of another experiment, or a config refused before training)
JOB_ERRORS: dict[str, str] = {}


def register_resolvers() -> None:
    # cached like Hydra's ${now:}: one value per config, and sweep jobs inherit the sweep's
    OmegaConf.register_new_resolver("nnopt_uid", lambda: f"{os.getpid()}-{secrets.token_hex(2)}",
                                    use_cache=True, replace=True)
    # hydra.sweep.subdir: the job's folder named by its overrides (job_dirs.py)
    OmegaConf.register_new_resolver("nnopt_job_dir", job_dirs.job_dir, replace=True)
    # hydra.run.dir: `-<name>` after the time for a run with name=... (checked before Hydra runs)
    OmegaConf.register_new_resolver("nnopt_name_suffix", lambda name=None: f"-{name}" if name else "", replace=True)


class SweepFolderError(NnoptError):
    """A sweep job's folder holds files of a different experiment."""


JOB_NOTES = ".nnopt-jobs"  # <sweep dir>/.nnopt-jobs/<job folder>.json: outcomes a job's folder does not show


def note_job(sweep_dir: str | Path, job_folder: str, status: str, note: str, overrides: list[str]) -> None:
    """Record a job's outcome for the end-of-sweep report when its own folder must not carry it
    (skipped, refused because the folder holds another run, or a config refused before any folder
    was kept); works across joblib workers."""
    JOB_ERRORS.pop(job_folder, None)
    if status == Status.FAILED:
        JOB_ERRORS[job_folder] = note
    try:
        folder = Path(sweep_dir) / JOB_NOTES
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"{job_folder}.json", {"status": status, "note": note, "overrides": overrides})
    except OSError as e:  # the in-process record above still reaches the report of a basic-launcher sweep
        log.warning("could not record job %s outcome in %s (%s)", job_folder, sweep_dir, e)


def job_action(run_dir: Path, cfg: dict) -> str:
    """What a skip_completed job does with its folder: 'skip', 'resume' or 'fresh'."""
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") in DONE:
        if summary.get("config_sha") in config_fingerprints(cfg):  # also a folder of former target names
            return "skip"
        raise SweepFolderError(f"{run_dir} holds a finished run of a different experiment; "
                               "rerun the sweep with the same overrides, or use a new hydra.sweep.dir")
    ckpt_path = run_dir / layout.CHECKPOINT
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        diff = config_diff(experiment_config(ckpt["config"]), experiment_config(cfg))
        if diff:
            raise SweepFolderError(f"{ckpt_path} belongs to a different experiment (config differs at "
                                   f"{', '.join(diff[:5])}); use a new hydra.sweep.dir")
        return "resume"
    return "fresh"


def _job_notes(sweep_dir: Path, since: float) -> dict[str, dict]:
    notes = {}
    folder = sweep_dir / JOB_NOTES
    for f in (folder.iterdir() if folder.is_dir() else []):
        try:
            if f.suffix == ".json" and f.stat().st_mtime >= since:
                note = json.loads(f.read_bytes()[:1 << 20])
                if isinstance(note, dict):
                    notes[f.stem] = note
        except (OSError, ValueError):
            continue
    return notes


def _holds_job(d: Path, note: dict) -> bool:
    """Whether folder d records the run of the job a note is about (its .hydra/overrides.yaml)."""
    try:
        wanted = job_dirs.identity(str(o) for o in note.get("overrides", []))
    except Exception:
        return False
    return job_dirs.recorded_identity(d) == wanted


def _job_row(d: Path, since: float, note: dict | None) -> dict | None:
    """One job folder's report row; None if this multirun did not touch it."""
    overrides_file = d / layout.OVERRIDES
    fresh = overrides_file.is_file() and overrides_file.stat().st_mtime >= since
    if not fresh and note is None:
        return None
    overrides = [str(o) for o in (note or {}).get("overrides", [])]
    if not overrides:
        try:
            loaded = load_yaml(read_text(overrides_file, CONFIG_MAX_BYTES), str(overrides_file))
            overrides = [str(o) for o in loaded] if isinstance(loaded, list) else ["<unreadable .hydra/overrides.yaml>"]
        except Exception:
            overrides = ["<unreadable .hydra/overrides.yaml>"]
    summary = read_summary(d) if d.is_dir() else None
    if note is not None and summary is not None and not _holds_job(d, note):
        summary = None  # the folder's numbers are another experiment's: never shown as this job's
        status = Status.FAILED
        text = str(note.get("note") or "") if note.get("status") == Status.FAILED else ""
        text = text or f"{d} holds another experiment's run; its result is not this job's"
    elif note is not None:
        status, text = str(note.get("status", Status.FAILED)), str(note.get("note", ""))
        if status == Status.FAILED:
            summary = None  # whatever the folder holds is not this job's result
    elif summary is None:
        status, text = Status.FAILED, "no readable summary.json: the job died before it started, or the file is corrupt"
    else:
        status = str(summary.get("status", Status.FAILED))
        text = str(summary.get("error") or summary.get("message") or "")
        if status in layout.UNFINISHED:
            status, text = Status.CRASHED, "the process died while training; rerun with skip_completed=true"
        elif status in DONE and (d / layout.SUMMARY).stat().st_mtime < since:  # Hydra rewrote its .hydra/
            status, text = Status.SKIPPED, "completed by an earlier run of this sweep"
    acc = summary.get("test/acc") if summary else None
    return {"job": d.name, "status": status, "overrides": overrides,
            "test/acc": acc if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None,
            "note": text, "dir": str(d)}


def natural_key(name: str) -> list:
    """Job folders in a readable order: seed=2 before seed=10, 2 before 10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def collect_jobs(sweep_dir: Path, since: float) -> list[dict]:
    """One row per job folder this multirun launched (its .hydra/ was written after `since`, or
    the job left a note). A folder that cannot be read is a failed row, never an exception."""
    jobs = []
    notes = _job_notes(sweep_dir, since)
    try:
        dirs = [d for d in sweep_dir.iterdir() if d.is_dir() and not d.name.startswith(".")] if sweep_dir.is_dir() else []
    except OSError:
        dirs = []
    dirs += [sweep_dir / n for n in notes if not (sweep_dir / n).is_dir()]
    for d in sorted(dirs, key=lambda p: natural_key(p.name)):
        try:
            row = _job_row(d, since, notes.get(d.name))
        except Exception as e:  # a malformed job folder must not cost the report
            row = {"job": d.name, "status": Status.FAILED, "overrides": [], "test/acc": None,
                   "note": f"unreadable job folder ({type(e).__name__}: {str(e)[:80]})", "dir": str(d)}
        if row is None:
            continue
        if d.name in JOB_ERRORS:
            row["status"], row["note"] = Status.FAILED, JOB_ERRORS[d.name]
        jobs.append(row)
    return jobs


def format_report(sweep_dir: Path, jobs: list[dict]) -> str:
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j["status"]] = counts.get(j["status"], 0) + 1
    lines = [f"sweep {sweep_dir}: {len(jobs)} job(s), " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    shared = set.intersection(*(set(j["overrides"]) for j in jobs)) if len(jobs) > 1 else set()
    for j in jobs:
        acc = f"test/acc={j['test/acc']:.4f}" if isinstance(j["test/acc"], (int, float)) else ""
        note = f"  ({j['note']})" if j["note"] and j["status"] != Status.COMPLETED else ""
        own = " ".join(o for o in j["overrides"] if o not in shared)  # what tells the jobs apart
        # a folder named by the job's overrides needs no mention; a hashed or numbered one does
        where = "" if "=" in j["job"] else f"  [{j['job']}]"
        lines.append(f"  {j['status']:<11} {acc:<15} {own}{where}{note}")
    return "\n".join(lines)


def make_report(sweep_dir: Path, since: float, interrupted: str | None = None) -> dict[str, Any]:
    """Collect, save (report.json) and print the jobs' statuses; never raises."""
    global LAST_REPORT
    try:
        jobs = collect_jobs(sweep_dir, since)
    except Exception as e:  # the report must come out whatever the folders hold
        jobs = [{"job": "?", "status": Status.FAILED, "overrides": [], "test/acc": None, "dir": str(sweep_dir),
                 "note": f"could not read the sweep folder ({type(e).__name__}: {str(e)[:80]})"}]
    JOB_ERRORS.clear()
    failed = [j for j in jobs if j["status"] not in OK]
    LAST_REPORT = {"sweep_dir": str(sweep_dir), "jobs": jobs, "failed": len(failed) or int(interrupted is not None)}
    if interrupted:
        LAST_REPORT["aborted"] = interrupted
    try:
        if sweep_dir.is_dir():
                write_json(sweep_dir / layout.SWEEP_REPORT, LAST_REPORT)
    except OSError as e:
        log.error("could not write %s/report.json (%s)", sweep_dir, e)
    print(format_report(sweep_dir, jobs) + (f"\nsweep aborted: {interrupted}" if interrupted else ""), flush=True)
    return LAST_REPORT


ACTIVE: dict[str, Any] = {}  # the multirun under way in this process: its folder and start time


def multirun_start_time(sweep_dir: Path) -> float:
    """The start of a multirun on the file system's own clock: the mtime of a marker written now.
    Job files written after it have mtimes >= it, while time.time() may run ahead of the coarser
    clock that stamps files (a margin wide enough for that would take in an earlier sweep's last jobs)."""
    marker = sweep_dir / JOB_NOTES / "multirun-started"
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{os.getpid()}\n")
        return marker.stat().st_mtime
    except OSError:  # an unwritable sweep folder fails its jobs anyway; fall back to the clock
        return time.time() - 1.0


class SweepReport(Callback):
    """Hydra callback: at the end of a multirun, print and save every job's status."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global LAST_REPORT
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.started = multirun_start_time(sweep_dir)
        LAST_REPORT = None
        ACTIVE.update(sweep_dir=sweep_dir, since=self.started)
        job_dirs.forget_scans()  # the sweep folder may have changed since an earlier multirun of this process

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        ACTIVE.clear()
        make_report(Path(str(config.hydra.sweep.dir)), self.started)


def report_aborted_sweep(reason: str) -> None:
    """A launcher that died mid-sweep (a killed joblib worker) skips on_multirun_end: report anyway."""
    if ACTIVE and LAST_REPORT is None:
        sweep_dir, since = ACTIVE["sweep_dir"], ACTIVE["since"]
        ACTIVE.clear()
        make_report(sweep_dir, since, interrupted=reason)
