"""What a run measures: evaluation on a split, the run's cumulative counters, the sums of an
epoch kept on the device, and the Diverged signal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnopt_cli import distributed
from nnopt_cli.precision import autocast_context


class Diverged(Exception):
    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"loss became {loss} at epoch {epoch}, step {step}")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             precision: str = "fp32", sharded: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in eval mode.

    sharded: under DDP each rank scores every world_size-th sample and the sums are added over
    the ranks, so every rank gets the numbers of the whole set (all ranks must call it).
    """
    n_all, world = len(x), distributed.world_size()
    if sharded and world > 1:
        x, y = x[distributed.rank()::world], y[distributed.rank()::world]
    was_training = model.training
    model.eval()
    loss_sum = x.new_zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    with autocast_context(precision, x.device):
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size]).float()
            yb = y[i:i + batch_size]
            loss_sum += F.cross_entropy(out, yb, reduction="sum").double()
            correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    if sharded and world > 1:
        loss_sum, correct = distributed.sum_over_ranks(loss_sum, correct)
    n = max(n_all, 1)
    return loss_sum.item() / n, correct.item() / n


@dataclass
class Counters:
    """Cumulative work of the run, written into every metrics row (time-to-target needs them)."""

    total_steps: int = 0  # optimizer steps
    samples_seen: int = 0  # training samples over all ranks
    forward_passes: int = 0  # forward passes over a batch (a closure optimizer makes several per step)
    backward_passes: int = 0
    train_s: float = 0.0  # seconds of training, evaluation excluded

    def as_row(self) -> dict[str, Any]:
        return dict(vars(self))


class EpochSums:
    """Per-epoch sums kept on the device (no host sync per step): loss, penalty, correct, grad norms.

    A step adds its loss in place and keeps the argmax of its logits beside its labels; the correct
    predictions are counted when asked (`correct()`: at the epoch's end, a progress update or an
    interrupt) or every KEEP_STEPS steps (so a long epoch holds few tensors): a count, the same
    whenever it is taken. Each tensor operation costs a step ~10 us here (cold caches after the
    optimizer's kernels), so a step makes three (detach, add_, argmax), not seven.
    """

    KEEP_STEPS = 1024

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.penalty = torch.zeros((), device=device)
        self._correct = torch.zeros((), dtype=torch.long, device=device)
        self._predicted: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self.grad_norms: list[torch.Tensor] = []

    def add_step(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, share: float) -> None:
        loss = loss.detach()
        self.loss.add_(loss if loss.dtype == torch.float32 else loss.float(), alpha=share)
        self._predicted.append(out.argmax(1))
        self._labels.append(y)
        if len(self._predicted) >= self.KEEP_STEPS:
            self.correct()

    def correct(self) -> torch.Tensor:
        """The correct predictions of the epoch so far (a count: the same whenever it is taken)."""
        if self._predicted:
            self._correct += (torch.cat(self._predicted) == torch.cat(self._labels)).sum()
            self._predicted, self._labels = [], []
        return self._correct

    @classmethod
    def resumed(cls, part: dict, device: torch.device) -> EpochSums:
        """The sums of an epoch an interrupt cut short, as its checkpoint saved them."""
        sums = cls(device)
        sums.loss = part["loss_sum"].to(device)
        sums.penalty = part["reg_sum"].to(device)
        sums._correct = part["correct"].to(device)
        sums.grad_norms = list(part["grad_norms"].to(device).unbind())
        return sums

    def cut(self, epoch: int, step: int, order_state: torch.Tensor, base_lr: float) -> dict[str, Any]:
        """What a checkpoint needs to finish this epoch later (same order, same sums so far)."""
        return {"epoch": epoch, "step": step, "generator": order_state, "base_lr": base_lr,
                "loss_sum": self.loss, "reg_sum": self.penalty, "correct": self.correct(),
                "grad_norms": torch.stack(self.grad_norms) if self.grad_norms else torch.zeros(0)}
