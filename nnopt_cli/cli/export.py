"""`nnopt export tensorboard <dirs>`: TensorBoard event files from existing run folders.

For runs made without `logger=tensorboard`: the same epoch, summary, stage and HParams events the
live logger writes (loggers/tensorboard.py), and evals.jsonl's evaluations, read with `nnopt
compare`'s tolerant readers. Nothing from the folder is instantiated or run. The per-step loss is
not in a run folder, so it is not exported. Runs that already have event files are left alone and
counted in one line; --force rewrites those an export wrote (the events of a run trained with
logger=tensorboard hold its per-step loss and are never replaced: use --out to write elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import threading
from pathlib import Path

from nnopt_cli.compare.discover import Run, config_groups, discover
from nnopt_cli.compare.files import read_jsonl
from nnopt_cli.errors import NnoptError, report_errors
from nnopt_cli.loggers.tensorboard import (
    HPARAMS_RUN,
    folder_hparams,
    summary_writer_class,
    write_epoch,
    write_evals,
    write_final,
    write_session_start,
)
from nnopt_cli.store import layout
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


def event_files(target: Path) -> set[Path]:
    """The event files of a run's export: the run's own and its HParams sub-run's."""
    return {f for d in (target, target / HPARAMS_RUN) if d.is_dir() for f in d.glob(EVENTS_GLOB)}


def logged_live(run: Run) -> bool:
    """Whether the run trained with logger=tensorboard: its event files hold the per-step loss."""
    return any(k.startswith("logger.tensorboard.") for k in run.config)


def export_tensorboard(paths: list[Path], out: Path | None = None,
                       force: bool = False) -> tuple[list[Path], list[str], int]:
    """Write one event file per run found below `paths` (and one for its HParams session); returns
    (folders written, notes, runs that could not be exported). Runs exported before are counted in
    one note, or with `force` rewritten. A run whose event files cannot be written whole (a full disk) stops the export with
    one line; its half-written event files are removed and the earlier ones kept."""
    writer_class = summary_writer_class("nnopt export tensorboard")
    written: list[Path] = []
    notes: list[str] = []
    exported_before = failed = found = 0
    for run in discover(paths):
        found += 1
        target = run.path if out is None else out / run.label
        old = event_files(target)
        if old and out is None and logged_live(run):
            notes.append(f"{run.label}: has the event files logger=tensorboard wrote while it trained, kept "
                         "(use --out DIR)")
            continue
        if old and not force:
            exported_before += 1
            continue
        if run.status in ("corrupt", "incomplete") and not run.epochs:
            notes.append(f"{run.label}: {run.status}, nothing to export")
            failed += 1
            continue
        steps = epoch_steps(run.epochs)
        if isinstance(steps, str):
            notes.append(f"{run.label}: {steps}; not exported")
            failed += 1
            continue
        evals = [r for r in read_jsonl(run.path / layout.EVALS)[0] if step_count(r.get("total_steps")) is not None]
        choices = {g: run.config[g] for g in config_groups() if isinstance(run.config.get(g), str)}
        had_hparams_run = (target / HPARAMS_RUN).is_dir()
        try:
            with thread_write_errors() as failed:
                target.mkdir(parents=True, exist_ok=True)
                writer = writer_class(log_dir=str(target))
                hp_writer = writer_class(log_dir=str(target / HPARAMS_RUN))
                try:
                    write_session_start(hp_writer, folder_hparams(run.path, run.config, choices))
                    for row, step in zip(run.epochs, steps, strict=True):
                        write_epoch(writer, row, step)
                    write_evals(writer, evals, [int(r["total_steps"]) for r in evals])
                    if run.summary:
                        write_final(hp_writer, run.summary, steps[-1] if steps else 0)
                finally:
                    writer.close()
                    hp_writer.close()
            if failed:
                raise failed[0]
        except OSError as e:  # a full disk: no half an event file stays for TensorBoard to show
            for f in event_files(target) - old:
                f.unlink(missing_ok=True)
            if not had_hparams_run:
                with contextlib.suppress(OSError):  # (not empty: someone else's files, left alone)
                    (target / HPARAMS_RUN).rmdir()
            raise OutputWriteError(f"cannot write TensorBoard events in {target}: {e.strerror or e}; "
                                   f"{len(written)} run(s) exported before it") from None
        for f in old:  # rewritten (--force): the earlier export's files go once the new ones are whole
            f.unlink(missing_ok=True)
        written.append(target)
    if exported_before:
        notes.append(f"{exported_before} run(s) already exported; --force rewrites them")
    if not found:
        notes.append(f"no run folder found under {', '.join(map(str, paths))}")
    return written, notes, failed if found else 1


def run(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="nnopt export", description="Write run folders into another tool's format.",
        epilog="example: nnopt export tensorboard outputs/multirun/2026-11-23 && "
               "tensorboard --logdir outputs/multirun/2026-11-23")
    parser.add_argument("target", choices=TARGETS, help="the format to write")
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, or folders holding run folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="write under OUT/<run> instead of into each run folder")
    parser.add_argument("--force", action="store_true",
                        help="rewrite the event files of runs exported before")
    ns = parser.parse_args(args)
    report_errors("export", export, ns)


def export(ns: argparse.Namespace) -> None:
    missing = [str(p) for p in ns.paths if not p.exists()]
    if missing:
        raise NnoptError(f"no such folder: {', '.join(missing)}")
    written, notes, failed = export_tensorboard(ns.paths, ns.out, ns.force)
    for n in notes:
        print(f"nnopt: {n}", file=sys.stderr)
    if failed and not written:  # exit 1: a script that exports and then reads the events learns nothing was written
        print("nnopt export: error: nothing exported, see above", file=sys.stderr)
        raise SystemExit(1)
    print(f"wrote TensorBoard event files for {len(written)} run(s); view them with: "
          f"tensorboard --logdir {ns.out or ns.paths[0]}")
