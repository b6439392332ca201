"""`nnopt export tensorboard <dirs>`: TensorBoard event files from existing run folders.

For runs made without `logger=tensorboard`: the same epoch, summary, stage and HParams events the
live logger writes (loggers/tensorboard.py), read with `nnopt compare`'s tolerant readers. Nothing
from the folder is instantiated or run. The per-step loss is not in a run folder, so it is not
exported. Runs that already have event files are left alone (use --out to write elsewhere).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnopt_cli.compare.discover import config_groups, discover
from nnopt_cli.errors import NnoptError
from nnopt_cli.loggers.tensorboard import (
    folder_hparams,
    summary_writer_class,
    write_epoch,
    write_final,
    write_session_start,
)

TARGETS = ("tensorboard",)
EVENTS_GLOB = "events.out.tfevents.*"


def export_tensorboard(paths: list[Path], out: Path | None = None) -> tuple[list[Path], list[str]]:
    """Write one event file per run found below `paths`; returns (folders written, notes)."""
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
        choices = {g: run.config[g] for g in config_groups() if isinstance(run.config.get(g), str)}
        target.mkdir(parents=True, exist_ok=True)
        writer = writer_class(log_dir=str(target))
        try:
            write_session_start(writer, folder_hparams(run.path, run.config, choices))
            step = 0
            for row in run.epochs:
                # the live logger's x-axis: optimizer steps at the end of each epoch
                step = int(row["total_steps"]) if isinstance(row.get("total_steps"), int) else step + int(
                    row.get("steps") or 0)
                write_epoch(writer, row, step)
            if run.summary:
                write_final(writer, run.summary, step)
        finally:
            writer.close()
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
    missing = [str(p) for p in ns.paths if not p.exists()]
    try:
        if missing:
            raise NnoptError(f"no such folder: {', '.join(missing)}")
        written, notes = export_tensorboard(ns.paths, ns.out)
    except NnoptError as e:
        print(f"nnopt: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    for n in notes:
        print(f"nnopt: {n}", file=sys.stderr)
    print(f"wrote TensorBoard event files for {len(written)} run(s); view them with: "
          f"tensorboard --logdir {ns.out or ns.paths[0]}")
    if not written and not notes:
        raise SystemExit(1)
