"""fit(): the epochs of training, one loop for the runner, the post-training fine-tunes and lr-find.

    for each epoch:  hooks.epoch_start -> train (Trainer.train_epoch) -> validate -> check
                     -> hooks.measure -> time -> hooks.epoch_row -> schedules -> hooks.epoch_end

A non-finite training loss (checked by the trainer at its steps) or val/loss (checked here) raises
Diverged, whoever called fit, so a fine-tune that blows up is caught like a run that does.

What a caller adds per epoch (writing the row, checkpoints, early stopping) is a FitHooks; what it
adds per step is an observer given to the Trainer (observers.py): lr-find ramps its LR and stops
from after_step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from nnopt_cli.training.interrupt import Interrupted
from nnopt_cli.training.metrics import Diverged, evaluate_split
from nnopt_cli.training.progress import Progress
from nnopt_cli.training.trainer import Trainer

Validation = Callable[[nn.Module], dict[str, Any]]  # model -> {loss, acc, ...}: the row's val/<name>


def _nothing(_: Any) -> None:
    return None


@dataclass
class FitHooks:
    """What a caller does at fixed points of each epoch; every hook is optional."""

    epoch_start: Callable[[int], None] = _nothing  # before the epoch trains (may raise Interrupted)
    measure: Callable[[dict], None] = _nothing  # adds metrics to the row; counted in its time_s
    epoch_row: Callable[[dict], None] = _nothing  # the finished row, before the epoch's schedules advance
    epoch_end: Callable[[dict], bool | None] = _nothing  # after they advanced (checkpoint here); True stops


def fit(trainer: Trainer, data: Any, epochs: Iterable[int], hooks: FitHooks | None = None,
        progress: Progress | None = None, validate: bool | Validation = True, elapsed_s: float = 0.0) -> None:
    """Train `trainer` on data.train_x/train_y for `epochs` (epoch numbers, 1-based), validating after
    each one: validate=True on data.val_x/val_y (metrics.evaluate_split), a callable model -> {loss, acc,
    ...} its own way
    (the runner's: a share per DDP rank), False not at all.

    elapsed_s: seconds an interrupt-cut first epoch already took (its time_s adds them). An
    Interrupted leaving fit carries the seconds its epoch ran so far as `elapsed_s`, for the checkpoint."""
    hooks = hooks or FitHooks()
    cfg, model = trainer.cfg, trainer.model
    if validate is True:
        validate = lambda m: evaluate_split(m, data.val_x, data.val_y, cfg["eval_batch_size"], cfg["precision"])
    for epoch in epochs:
        t0, elapsed_s = time.perf_counter() - elapsed_s, 0.0
        try:
            hooks.epoch_start(epoch)
            row = {"epoch": epoch, **trainer.train_epoch(epoch, data.train_x, data.train_y, progress)}
        except Interrupted as i:
            i.elapsed_s = time.perf_counter() - t0
            raise
        if validate:
            row.update({f"val/{k}": v for k, v in validate(model).items()})
            if not math.isfinite(row["val/loss"]):
                raise Diverged(epoch, row["steps"], row["val/loss"])
        hooks.measure(row)
        # train + validation (evaluate() synced with the device); without the time a run of a vectorized
        # group spent waiting for the other members' turns (lockstep.py)
        row["time_s"] = time.perf_counter() - t0 - row.pop("waited_s", 0.0)
        hooks.epoch_row(row)
        trainer.end_epoch(row)
        if hooks.epoch_end(row):
            return
