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
import secrets
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nnopt_cli.checkpoint import config_diff, config_fingerprint, experiment_config, load_checkpoint
from nnopt_cli.errors import NnoptError
from nnopt_cli.run_dir import write_json

log = logging.getLogger("nnopt")

DONE = ("completed", "diverged")  # finished experiments: rerunning them would give the same result
OK = ("completed", "diverged", "skipped")
LAST_REPORT: dict[str, Any] | None = None  # the report of the multirun that just ended in this process
# job num -> error, for jobs that failed in this process without writing their folder's summary
# (e.g. a skip_completed job refusing a folder of another experiment)
JOB_ERRORS: dict[str, str] = {}


def register_resolvers() -> None:
    # cached like Hydra's ${now:}: one value per config, and sweep jobs inherit the sweep's
    OmegaConf.register_new_resolver("nnopt_uid", lambda: f"{os.getpid()}-{secrets.token_hex(2)}",
                                    use_cache=True, replace=True)


class SweepFolderError(NnoptError):
    """A sweep job's folder holds files of a different experiment."""


def read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def job_action(run_dir: Path, cfg: dict) -> str:
    """What a skip_completed job does with its folder: 'skip', 'resume' or 'fresh'."""
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") in DONE:
        if summary.get("config_sha") == config_fingerprint(cfg):
            return "skip"
        raise SweepFolderError(f"{run_dir} holds a finished run of a different experiment; "
                               "rerun the sweep with the same overrides, or use a new hydra.sweep.dir")
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        diff = config_diff(experiment_config(ckpt["config"]), experiment_config(cfg))
        if diff:
            raise SweepFolderError(f"{ckpt_path} belongs to a different experiment (config differs at "
                                   f"{', '.join(diff[:5])}); use a new hydra.sweep.dir")
        return "resume"
    return "fresh"


def collect_jobs(sweep_dir: Path, since: float) -> list[dict]:
    """One row per job folder this multirun launched (its .hydra/ was written after `since`)."""
    jobs = []
    for d in sorted(sweep_dir.iterdir() if sweep_dir.is_dir() else [],
                    key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)):
        overrides_file = d / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file() or overrides_file.stat().st_mtime < since:
            continue
        try:
            overrides = [str(o) for o in OmegaConf.load(overrides_file)]
        except Exception:
            overrides = ["<unreadable .hydra/overrides.yaml>"]
        summary = read_summary(d)
        if summary is None:
            status, note = "failed", "no summary.json: the job died before it started"
        else:
            status = summary.get("status", "failed")
            note = summary.get("error") or summary.get("message") or ""
            if status == "running":
                status, note = "crashed", "the process died while training; rerun with skip_completed=true"
            elif status in DONE and (d / "summary.json").stat().st_mtime < since:
                status, note = "skipped", "completed by an earlier run of this sweep"
        if d.name in JOB_ERRORS:
            status, note = "failed", JOB_ERRORS[d.name]
        jobs.append({"job": d.name, "status": status, "overrides": overrides,
                     "test/acc": (summary or {}).get("test/acc"), "note": note, "dir": str(d)})
    return jobs


def format_report(sweep_dir: Path, jobs: list[dict]) -> str:
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j["status"]] = counts.get(j["status"], 0) + 1
    lines = [f"sweep {sweep_dir}: {len(jobs)} job(s), " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    shared = set.intersection(*(set(j["overrides"]) for j in jobs)) if len(jobs) > 1 else set()
    for j in jobs:
        acc = f"test/acc={j['test/acc']:.4f}" if isinstance(j["test/acc"], (int, float)) else ""
        note = f"  ({j['note']})" if j["note"] and j["status"] != "completed" else ""
        own = " ".join(o for o in j["overrides"] if o not in shared)  # what tells the jobs apart
        lines.append(f"  #{j['job']:<3} {j['status']:<11} {acc:<15} {own}{note}")
    return "\n".join(lines)


class SweepReport(Callback):
    """Hydra callback: at the end of a multirun, print and save every job's status."""
    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file mtimes may be coarser than time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global LAST_REPORT
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = collect_jobs(sweep_dir, self.started)
        JOB_ERRORS.clear()
        failed = [j for j in jobs if j["status"] not in OK]
        LAST_REPORT = {"sweep_dir": str(sweep_dir), "jobs": jobs, "failed": len(failed)}
        if sweep_dir.is_dir():

            write_json(sweep_dir / "report.json", LAST_REPORT)
        print(format_report(sweep_dir, jobs), flush=True)
