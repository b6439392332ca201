"""logger=csv: a run's epoch rows as metrics.csv in its run folder, live, for a spreadsheet.

Lightning's CSVLogger convention: a header row, then one row per epoch with every number of the
epoch's metrics row (nested ones slash-joined: diag/fc1/grad_norm) and `step`, the optimizer step
the epoch ended at. A column that first appears in a later epoch (a diagnostic computed every few
epochs) rewrites the file with the wider header; earlier rows leave that cell empty. At the end a
row with `epoch` empty holds the final numbers (test/acc, best/val/acc, post-training results).

Each write replaces the file atomically, so a killed run leaves a whole file. A resumed run keeps
the rows of the epochs its checkpoint holds and drops later ones (a killed run wrote them).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from nnopt_cli.loggers.tensorboard import final_scalars, scalars
from nnopt_cli.store import layout
from nnopt_cli.store.folder import atomic_write_bytes
from nnopt_cli.training.observers import EpochInfo, Observer, RunInfo

LEAD = ("epoch", "step")  # the first columns, in this order; the others sorted


class CSVLogger(Observer):
    def __init__(self):
        self.path: Path | None = None
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = list(LEAD)

    def on_run_start(self, run: RunInfo) -> None:
        if not run.write:  # DDP ranks other than 0
            return
        self.path = run.run_dir / layout.METRICS_CSV
        if run.resumed_epoch and self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or LEAD)
                self.rows = [r for r in reader if (r.get("epoch") or "").isdigit()
                             and int(r["epoch"]) <= run.resumed_epoch]

    def on_epoch_end(self, epoch: EpochInfo) -> None:
        if self.path is None:
            return
        self._add({"epoch": epoch.epoch, "step": epoch.step, **scalars(epoch.row, skip=("epoch", "stage"))})

    def on_run_end(self, summary: dict[str, Any]) -> None:
        if self.path is not None:
            self._add(final_scalars(summary))

    def _add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        new = sorted(k for k in row if k not in self.columns)
        self.columns += new
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, out.getvalue().encode())
