"""Early stopping (the `early_stopping` keys of conf/train.yaml): stop when a validation metric has
not improved for `patience` epochs, optionally restoring the best epoch's weights before the test.

Its state (best value, counters, the best weights) is checkpointed, so a resumed run stops at the
same epoch as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class EarlyStopping:
    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float, restore_best: bool):
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.restore_best = min_delta, restore_best
        self.best: float | None = None
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_epochs = 0

    @classmethod
    def from_config(cls, node: dict) -> EarlyStopping | None:
        if not node["enabled"]:
            return None
        return cls(node["monitor"], node["mode"], node["patience"], node["min_delta"], node["restore_best"])

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def step(self, epoch: int, row: dict, model: nn.Module) -> bool:
        """Record this epoch; True when training should stop."""
        value = row[self.monitor]
        if self.improved(value):
            self.best = value
            self.best_epoch = epoch
            self.bad_epochs = 0
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.best_state = state["best_state"]
