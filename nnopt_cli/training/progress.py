"""Progress output: a live rich bar on a terminal, plain log lines otherwise (sweeps, CI, files).

    Progress   a run's epochs: a bar per epoch with the run's ETA on a terminal, else one line per
               epoch ending in `eta=` (epochs left x the mean measured epoch time)
    Count      done/total of a loop that is not epochs (lr-find's steps, landscape's points): a bar
               on a terminal, else a line at every tenth of the way

Off a terminal nothing is written per step: the lines come at epoch ends or tenths. In a sweep
whose jobs run at once (hydra/launcher=parallel) each job's lines start with its `prefix`
([job 3/8 optimizer=adam,seed=1]) and are written whole, one logging call per line; the caller
turns the live bar off there, since several processes cannot share one live display.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("nnopt")


def duration(seconds: float) -> str:
    """45s, 3m05s, 2h07m: short enough for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


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

    def __init__(self, epochs: int, live: bool | None = None, label: str = "train", prefix: str = ""):
        self.epochs, self.label = epochs, label
        self.prefix = f"{prefix} " if prefix else ""
        self.live = sys.stdout.isatty() if live is None else live
        self._bar = None
        self._task = None
        self._epoch_started: float | None = None
        self._times: list[float] = []  # wall time of each epoch this process ran (training + validation)

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                transient=False,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def eta_s(self, epochs_done: int) -> float | None:
        """Seconds left for the run: epochs left x the mean of the epochs measured so far (an
        upper bound when early stopping ends the run sooner); None before the first epoch."""
        if not self._times:
            return None
        return max(0, self.epochs - epochs_done) * sum(self._times) / len(self._times)

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._epoch_started = time.perf_counter()
        if self._bar is not None:
            desc = f"{self.prefix}{self.label} epoch {epoch}/{self.epochs}"
            eta = self.eta_s(epoch - 1)
            self._task = self._bar.add_task(desc, total=steps, stats="",
                                            eta="" if eta is None else f"run eta {duration(eta)}")

    def update(self, step: int, loss: float, acc: float | None, lr: float) -> None:
        """acc: None for regression."""
        if self._bar is not None:
            shown = f" acc {acc:.4f}" if acc is not None else ""
            self._bar.update(self._task, completed=step, stats=f"loss {loss:.4f}{shown} lr {lr:.3g}")

    def end_epoch(self, row: dict) -> None:
        if self._epoch_started is not None:
            self._times.append(time.perf_counter() - self._epoch_started)
            self._epoch_started = None
        eta = self.eta_s(row["epoch"])
        eta_text = "" if eta is None else f" eta={duration(eta)}"
        if self._bar is not None:
            task = self._bar.tasks[-1]
            self._bar.update(self._task, completed=task.total, eta="" if eta is None else f"run eta {duration(eta)}",
                             stats=" ".join(f"{k} {row[k]:.4f}" for k in ("val/loss", "val/acc", "val/rmse")
                                            if row.get(k) is not None))
        else:
            log.info("%s%s epoch %s/%s %s%s", self.prefix, self.label, row["epoch"], self.epochs, _fmt(row), eta_text)


class Count:
    """done/total of a loop of equal pieces of work: a bar on a terminal (stderr), otherwise a
    plain line on stderr at every tenth of the way (never one per piece)."""

    def __init__(self, total: int, label: str, unit: str = "steps", live: bool | None = None):
        self.total, self.label, self.unit = max(int(total), 0), label, unit
        self.live = sys.stderr.isatty() if live is None else live
        self.done = 0
        self._bar = None
        self._task = None
        self._started = 0.0
        self._next_line = 1  # the next tenth that gets a plain line

    def __enter__(self) -> Count:
        self._started = time.perf_counter()
        if self.live and self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(self.unit), TimeRemainingColumn(), console=Console(stderr=True))
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def eta_s(self) -> float | None:
        if not self.done:
            return None
        return (time.perf_counter() - self._started) / self.done * max(0, self.total - self.done)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        if self.total and self.done * 10 >= self._next_line * self.total:
            self._next_line = self.done * 10 // self.total + 1
            eta = self.eta_s()
            print(f"{self.label}: {self.done}/{self.total} {self.unit}"
                  + ("" if eta is None or self.done >= self.total else f", eta {duration(eta)}"),
                  file=sys.stderr, flush=True)
