"""Progress output: a live rich bar on a terminal, plain log lines otherwise (sweeps, CI, files)."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("nnopt")


def _fmt(row: dict) -> str:
    keys = ("train/loss", "train/acc", "val/loss", "val/acc", "val/rmse", "val/r2", "lr", "batch_size", "time_s")
    parts = []
    for k in keys:
        v = row.get(k)
        if v is None:
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class Progress:
    """start_epoch / update / end_epoch; `update` is called every few steps, never every step."""

    def __init__(self, epochs: int, live: bool | None = None, label: str = "train"):
        self.epochs, self.label = epochs, label
        self.live = sys.stdout.isatty() if live is None else live
        self._bar = None
        self._task = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), transient=False,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self._bar is not None:
            desc = f"{self.label} epoch {epoch}/{self.epochs}"
            self._task = self._bar.add_task(desc, total=steps, stats="")

    def update(self, step: int, loss: float, acc: float | None, lr: float) -> None:
        """acc: None for regression."""
        if self._bar is not None:
            shown = f" acc {acc:.4f}" if acc is not None else ""
            self._bar.update(self._task, completed=step, stats=f"loss {loss:.4f}{shown} lr {lr:.3g}")

    def end_epoch(self, row: dict) -> None:
        msg = f"{self.label} epoch {row['epoch']}/{self.epochs} {_fmt(row)}"
        if self._bar is not None:
            task = self._bar.tasks[-1]
            self._bar.update(self._task, completed=task.total,
                             stats=" ".join(f"{k} {row[k]:.4f}" for k in ("val/loss", "val/acc", "val/rmse")
                                            if row.get(k) is not None))
        else:
            log.info(msg)
