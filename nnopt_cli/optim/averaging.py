"""Weight averaging (conf/averaging/*.yaml): EMA or SWA of the weights, on torch.optim.swa_utils.

    averaging=none   train and evaluate the raw weights (the default)
    averaging=ema    AveragedModel with get_ema_multi_avg_fn(decay), buffers averaged too, updated
                     every `every` optimizer steps from `start` (a fraction of the run's steps)
    averaging=swa    AveragedModel with the equal-weight SWA average (Izmailov et al. 2018), updated
                     at the end of every epoch from epoch `start_epoch`; optionally SWALR takes over
                     the LR from there; BatchNorm statistics recomputed for the average (update_bn)

How the run uses it (the hooks, in loop order):
    avg = Averager.from_config(cfg["averaging"], model, total_steps, epochs)   # None for none
    after every optimizer step:   avg.after_step(model, total_steps_so_far)
    at every epoch end:           avg.end_epoch(model, epoch)        (before validation)
    LR at that epoch end:         avg.swa_scheduler(optimizer) once, then it replaces the run's
                                  scheduler while avg.schedule_taken_over(epoch)
    to validate / test / save:    avg.eval_model(train_x, batch_size) -> the averaged nn.Module
                                  (the raw model until the first average exists); the runner
                                  records the raw model's val metrics beside it as raw/val/loss ...
    checkpoint:                   avg.state_dict() / avg.load_state_dict(state)
trainer.py does all of this itself through EvalWeights (below): train_epoch ends with the average
in the model, the next one puts the raw weights back, so the runner's evaluate(model), checkpoint,
test and model.pt see the average without a line of their own. The one thing left to the runner is
recording the raw model's metrics: row.update(trainer.weights.raw_metrics(val_x, val_y, batch_size, precision)).
update_bn reads the first `bn_batches` training batches in order, so it draws no random number
and a resumed run recomputes exactly the same statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn, update_bn


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recompute_bn(model: nn.Module, x: torch.Tensor, batch_size: int, batches: int) -> None:
    """BatchNorm running statistics of `model` from the first `batches` batches of x (update_bn)."""
    if batches <= 0 or not has_batch_norm(model):
        return
    n = min(len(x), batches * batch_size)
    update_bn((x[i:i + batch_size] for i in range(0, n, batch_size)), model)


class Averager:
    """The averaged copy of the model and when to update it (see the module docstring)."""

    def __init__(self, node: dict, model: nn.Module, total_steps: int):
        self.kind = node["name"]
        if self.kind == "ema":
            self.every = node["every"]
            self.first_step = int(node["start"] * total_steps)
            self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(node["decay"]),
                                          use_buffers=True)
            self.bn_batches = 0  # the buffers are averaged with the weights
        else:
            self.start_epoch = node["start_epoch"]
            self.swa_lr, self.anneal_epochs = node.get("swa_lr"), node.get("anneal_epochs", 1)
            self.anneal_strategy = node.get("anneal_strategy", "cos")
            self.averaged = AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn())
            self.bn_batches = node["bn_batches"]
        self.bn_stale = True  # update_bn must run before the average is evaluated

    @classmethod
    def from_config(cls, node: dict | None, model: nn.Module, total_steps: int) -> Averager | None:
        if node is None or node["name"] == "none":
            return None
        return cls(node, model, total_steps)

    @property
    def started(self) -> bool:
        return int(self.averaged.n_averaged) > 0

    def after_step(self, model: nn.Module, total_steps: int) -> None:
        """EMA: fold the weights in after optimizer step number `total_steps` (counted from 1)."""
        if self.kind == "ema" and total_steps > self.first_step and (total_steps - self.first_step) % self.every == 0:
            self.averaged.update_parameters(model)

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        """SWA: fold the end-of-epoch weights in from start_epoch on."""
        if self.kind == "swa" and epoch >= self.start_epoch:
            self.averaged.update_parameters(model)
            self.bn_stale = True

    def schedule_taken_over(self, epoch: int) -> bool:
        """Whether SWALR drives the LR after this epoch (instead of the run's scheduler)."""
        return self.kind == "swa" and self.swa_lr is not None and epoch >= self.start_epoch

    def swa_scheduler(self, optimizer: Optimizer) -> SWALR | None:
        if self.kind != "swa" or self.swa_lr is None:
            return None
        return SWALR(optimizer, self.swa_lr, anneal_epochs=self.anneal_epochs,
                     anneal_strategy=self.anneal_strategy)

    def eval_model(self, model: nn.Module, train_x: torch.Tensor, batch_size: int) -> nn.Module:
        """The module to validate, test and save: the average once one exists, else `model`."""
        if not self.started:
            return model
        if self.bn_stale and self.bn_batches:
            recompute_bn(self.averaged.module, train_x, batch_size, self.bn_batches)
        self.bn_stale = False
        return self.averaged.module

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict(), "bn_stale": self.bn_stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.bn_stale = state["bn_stale"]



