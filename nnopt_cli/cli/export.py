"""`nnopt export tensorboard <dirs>`: TensorBoard event files from existing run folders.

For runs made without `logger=tensorboard`: the same epoch, summary, stage and HParams events the
live logger writes (loggers/tensorboard.py), read with `nnopt compare`'s tolerant readers. Nothing
from the folder is instantiated or run. The per-step loss is not in a run folder, so it is not
exported. Runs that already have event files are left alone (use --out to write elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import threading
from pathlib import Path

from nnopt_cli.compare.discover import config_groups, discover
from nnopt_cli.errors import NnoptError, report_errors
from nnopt_cli.loggers.tensorboard import (
    folder_hparams,
    summary_writer_class,
    write_epoch,
    write_final,
    write_session_start,
)
from nnopt_cli.store.outputs import OutputWriteError

TARGETS = ("tensorboard",)
EVENTS_GLOB = "events.out.tfevents.*"


MAX_STEP = 2**63 - 1  # event files store steps as int64


def step_count(v) -> int | None:
    """A step count read from metrics.jsonl, or None when it is not a whole number an event file
    can hold (inf, NaN, 1e300, negative, a string)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        return None
    return int(v) if 0 <= v <= MAX_STEP else None


def epoch_steps(rows: list[dict]) -> list[int] | str:
    """The live logger's x-axis, optimizer steps at the end of each epoch (total_steps, else the
    sum of steps); or why a row's count is unusable."""
    steps, step = [], 0
    for i, row in enumerate(rows, 1):
        key = "total_steps" if "total_steps" in row else "steps"
        n = step_count(row.get(key, 0) if row.get(key) is not None else 0)
        if n is None:
            return f"epoch row {i} of metrics.jsonl has {key}={row.get(key)!r}, not a step count"
        step = n if key == "total_steps" else step + n
        if step > MAX_STEP:
            return f"the step count passes {MAX_STEP} at epoch row {i} of metrics.jsonl"
        steps.append(step)
    return steps


@contextlib.contextmanager
def thread_write_errors():
    """The OSErrors of the event writer's background thread (a full disk), collected instead of
    printed as a thread's traceback; other exceptions go to the usual hook."""
    failed: list[OSError] = []
    previous = threading.excepthook

    def hook(args):
        if isinstance(args.exc_value, OSError):
            failed.append(args.exc_value)
        else:
            previous(args)

    threading.excepthook = hook
    try:
        yield failed
    finally:
        threading.excepthook = previous


def export_tensorboard(paths: list[Path], out: Path | None = None) -> tuple[list[Path], list[str]]:
    """Write one event file per run found below `paths`; returns (folders written, notes). A run
    whose event file cannot be written whole (a full disk) stops the export with one line, and its
    half-written event file is removed."""
    writer_class = summary_writer_class("nnopt export tensorboard")
    written: list[Path] = []
    notes: list[str] = []
    for run in discover(paths):
        target = run.path if out is None else out / run.label
        if target.is_dir() and any(target.glob(EVENTS_GLOB)):
            notes.append(f"{run.label}: already has TensorBoard event files, skipped (use --out DIR)")
            continue
        if run.status in ("corrupt", "incomplete") and not run.epochs:
            notes.append(f"{run.label}: {run.status}, nothing to export")
            continue
        steps = epoch_steps(run.epochs)
        if isinstance(steps, str):
            notes.append(f"{run.label}: {steps}; not exported")
            continue
        choices = {g: run.config[g] for g in config_groups() if isinstance(run.config.get(g), str)}
        before = set(target.glob(EVENTS_GLOB)) if target.is_dir() else set()
        try:
            with thread_write_errors() as failed:
                target.mkdir(parents=True, exist_ok=True)
                writer = writer_class(log_dir=str(target))
                try:
                    write_session_start(writer, folder_hparams(run.path, run.config, choices))
                    for row, step in zip(run.epochs, steps, strict=True):
                        write_epoch(writer, row, step)
                    if run.summary:
                        write_final(writer, run.summary, steps[-1] if steps else 0)
                finally:
                    writer.close()
            if failed:
                raise failed[0]
        except OSError as e:  # a full disk: no half an event file stays for TensorBoard to show
            for f in set(target.glob(EVENTS_GLOB)) - before:
                f.unlink(missing_ok=True)
            raise OutputWriteError(f"cannot write TensorBoard events in {target}: {e.strerror or e}; "
                                   f"{len(written)} run(s) exported before it") from None
        written.append(target)
    return written, notes


def run(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="nnopt export", description="Write run folders into another tool's format.",
        epilog="example: nnopt export tensorboard outputs/multirun/2026-11-23 && "
               "tensorboard --logdir outputs/multirun/2026-11-23")
    parser.add_argument("target", choices=TARGETS, help="the format to write")
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, or folders holding run folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="write under OUT/<run> instead of into each run folder")
    ns = parser.parse_args(args)
    report_errors("export", export, ns)


def export(ns: argparse.Namespace) -> None:
    missing = [str(p) for p in ns.paths if not p.exists()]
    if missing:
        raise NnoptError(f"no such folder: {', '.join(missing)}")
    written, notes = export_tensorboard(ns.paths, ns.out)
    for n in notes:
        print(f"nnopt: {n}", file=sys.stderr)
    if not written:  # exit 1: a script that exports and then reads the events learns nothing was written
        why = (f"every run found ({len(notes)}) was skipped, see above" if notes else
               f"no run folder found under {', '.join(map(str, ns.paths))}")
        print(f"nnopt export: error: nothing exported: {why}", file=sys.stderr)
        raise SystemExit(1)
    print(f"wrote TensorBoard event files for {len(written)} run(s); view them with: "
          f"tensorboard --logdir {ns.out or ns.paths[0]}")
