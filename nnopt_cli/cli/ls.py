"""`nnopt ls [paths]`: the recent runs, newest first, with their time, status, name, tags and
test/acc (`outputs/latest`, the link to the last single run's folder, is run/job.py's link_latest).

Torch-free: folders are read with `nnopt compare`'s tolerant reader (nothing in them is built).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from nnopt_cli.compare.discover import Run, discover
from nnopt_cli.compare.render import render
from nnopt_cli.compare.table import Column, Table
from nnopt_cli.errors import NnoptError, report_errors

HEADLINE = "test/acc"
REGRESSION_HEADLINE = "test/rmse"  # shown as well when a listed run is a regression (no accuracy)

EPILOG = """examples:
  nnopt ls                          the 20 newest runs under outputs/
  nnopt ls outputs/multirun -n 0    every run of every sweep
  nnopt ls --format csv > runs.csv
The headline metric is test/acc (and test/rmse when a regression run is listed); nnopt compare
shows every metric, by config key."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnopt ls", description="List recent runs, newest first.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path, default=[Path("outputs")],
                   help="folders to search for runs (default: outputs)")
    p.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="newest N runs; 0 = all (default 20)")
    p.add_argument("--format", choices=("table", "csv", "markdown", "json"), default="table")
    return p


def started(run: Run) -> float:
    """When the run started (summary.json), else when its folder was last changed."""
    try:
        return datetime.strptime(str(run.summary.get("started_at")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        try:
            return run.path.stat().st_mtime
        except OSError:
            return 0.0


def label(run: Run, key: str):
    """name / tags from the run's config, else its summary.json; None when not given."""
    return run.config.get(key, run.summary.get(key)) or None


def runs_table(runs: list[Run], limit: int) -> Table:
    newest = sorted(runs, key=started, reverse=True)
    if limit > 0:
        newest = newest[:limit]
    headlines = [HEADLINE] + ([REGRESSION_HEADLINE] if any(REGRESSION_HEADLINE in r.metrics() for r in newest) else [])
    cols = [Column("started", "text"), Column("status", "status"), Column("name", "text"), Column("tags", "text"),
            *(Column(h, "metric") for h in headlines), Column("run", "run")]
    rows = [{"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started(r))), "status": r.status,
             "name": label(r, "name"), "tags": label(r, "tags"), **{h: r.metrics().get(h) for h in headlines},
             "run": str(r.path)} for r in newest]
    notes = [f"{len(newest)} of {len(runs)} runs, newest first (-n 0: all)"] if len(newest) < len(runs) else []
    return Table(cols, rows, notes=notes)


def list_runs(args: argparse.Namespace) -> None:
    if args.limit < 0:
        raise NnoptError(f"-n {args.limit}: a number of runs >= 0 (0 = all)")
    for p in args.paths:
        if not p.exists():
            raise NnoptError(f"path {str(p)!r} does not exist (nnopt train writes runs under outputs/)")
    runs = discover(args.paths)
    if not runs:
        raise NnoptError(f"no runs found under {', '.join(map(str, args.paths))}")
    render(runs_table(runs, args.limit), args.format)


def run(argv: list[str]) -> None:
    """Entry point for `nnopt ls ...`: errors are one line and a non-zero exit."""
    report_errors("ls", list_runs, parser().parse_args(argv))
