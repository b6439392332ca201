"""The weights a run evaluates, tests and saves: the raw training weights, schedule-free's evaluation
point (optimizer.eval(), BatchNorm statistics recomputed) and/or the EMA/SWA average."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.optim import Optimizer

from nnopt_cli.optim.averaging import Averager, recompute_bn
from nnopt_cli.optim.optimizers import Protocol, set_eval, set_train
from nnopt_cli.training.metrics import evaluate


class EvalWeights:
    """Which weights the model holds. During an epoch: the training weights. Between epochs (and
    around step-interval evaluations): the weights to evaluate, test and save: schedule-free's
    average x (optimizer.eval(), BatchNorm statistics recomputed from bn_batches training batches)
    and/or the EMA/SWA average, with the raw training weights kept in `raw` (checkpointed)."""

    def __init__(self, model: nn.Module, optimizer: Optimizer, protocol: Protocol, averager: Averager | None):
        self.model, self.optimizer, self.protocol, self.averager = model, optimizer, protocol, averager
        self.raw: dict[str, torch.Tensor] | None = None

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(state[k])

    def to_training(self) -> None:
        if self.raw is not None:
            self._load(self.raw)
            self.raw = None
        if self.protocol.train_eval:
            set_train(self.optimizer)

    def to_evaluation(self, x_all: torch.Tensor, batch_size: int) -> None:
        if self.protocol.train_eval:
            set_eval(self.optimizer)
            recompute_bn(self.model, x_all, batch_size, self.protocol.bn_batches)
        if self.averager is not None and self.averager.started:
            avg = self.averager.eval_model(self.model, x_all, batch_size).state_dict()
            self.raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._load(avg)

    @contextlib.contextmanager
    def raw_in_model(self):
        """The raw weights in the model for a moment (yields False when the model holds no average)."""
        if self.raw is None:
            yield False
            return
        held = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._load(self.raw)
        try:
            yield True
        finally:
            self._load(held)

    def raw_metrics(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, precision: str) -> dict[str, float]:
        """With averaging: the raw (training) weights' loss and accuracy on (x, y), to record beside
        the average's as raw/val/loss, raw/val/acc (regression: the loss alone). Empty while the model
        holds no average."""
        with self.raw_in_model() as raw:
            if not raw:
                return {}
            loss, acc = evaluate(self.model, x, y, batch_size, precision, sharded=True)
        return {"raw/val/loss": loss, **({"raw/val/acc": acc} if acc is not None else {})}
