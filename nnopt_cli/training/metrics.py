"""What a run measures: evaluation on a split, the run's cumulative counters, the sums of an
epoch kept on the device, and the Diverged signal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnopt_cli.training import distributed
from nnopt_cli.training.precision import autocast_context


class Diverged(Exception):
    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"loss became {loss} at epoch {epoch}, step {step}")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             precision: str = "fp32", sharded: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in eval mode (see evaluate_split); regression
    (float targets): the MSE and None."""
    got = evaluate_split(model, x, y, batch_size, precision, sharded)
    return got["loss"], got.get("acc")


@torch.no_grad()
def evaluate_split(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   precision: str = "fp32", sharded: bool = False) -> dict[str, Any]:
    """loss (mean cross-entropy), acc and the class metrics of the confusion matrix (class_metrics)
    over (x, y), in eval mode.

    Float targets (regression): loss = mse, rmse and r2 (regression_metrics) instead.

    sharded: under DDP each rank scores every world_size-th sample and the sums are added over
    the ranks, so every rank gets the numbers of the whole set (all ranks must call it).
    """
    n_all, world = len(x), distributed.world_size()
    if sharded and world > 1:
        x, y = x[distributed.rank()::world], y[distributed.rank()::world]
    if y.is_floating_point():
        return _evaluate_regression(model, x, y, batch_size, precision, sharded and world > 1, n_all)
    was_training = model.training
    model.eval()
    loss_sum = x.new_zeros((), dtype=torch.float64)
    confusion: torch.Tensor | None = None  # [true class, predicted class] counts
    with autocast_context(precision, x.device):
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size]).float()
            yb = y[i:i + batch_size]
            loss_sum += F.cross_entropy(out, yb, reduction="sum").double()
            classes = out.shape[1]
            pairs = torch.bincount(yb * classes + out.argmax(1), minlength=classes * classes)
            confusion = pairs if confusion is None else confusion + pairs
    model.train(was_training)
    if confusion is None:  # an empty split
        confusion = torch.zeros(0, dtype=torch.long, device=x.device)
    if sharded and world > 1:
        loss_sum = distributed.sum_over_ranks(loss_sum)[0]
        confusion = distributed.sum_tensor_over_ranks(confusion)
    classes = math.isqrt(confusion.numel())
    confusion = confusion.reshape(classes, classes).cpu()
    n = max(n_all, 1)
    return {"loss": loss_sum.item() / n, "acc": confusion.diagonal().sum().item() / n,
            **class_metrics(confusion)}


@torch.no_grad()
def _evaluate_regression(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, precision: str,
                         sharded: bool, n_all: int) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    sums = x.new_zeros(3, dtype=torch.float64)  # squared errors, targets, squared targets
    with autocast_context(precision, x.device):
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size]).float().reshape(-1).double()
            yb = y[i:i + batch_size].double()
            sums += torch.stack([((out - yb) ** 2).sum(), yb.sum(), (yb ** 2).sum()])
    model.train(was_training)
    if sharded:
        sums = distributed.sum_tensor_over_ranks(sums)
    sse, total, squares = sums.tolist()
    return regression_metrics(sse, total, squares, n_all)


def regression_metrics(sse: float, total: float, squares: float, n: int) -> dict[str, Any]:
    """mse, rmse and r2 = 1 - SSE / SST (SST: squared deviations from the split's mean target) from
    the sums of squared errors, targets and squared targets; loss is the mse."""
    n = max(n, 1)
    mse = sse / n
    sst = squares - total * total / n
    return {"loss": mse, "mse": mse, "rmse": math.sqrt(mse), "r2": 1 - sse / sst if sst > 0 else None}


def class_metrics(confusion: torch.Tensor) -> dict[str, Any]:
    """Per-class accuracy (recall), balanced accuracy and macro-F1 of a [true, predicted] count
    matrix, as scikit-learn defines them: balanced_acc is the mean recall over the classes present
    in the split; macro_f1 the mean of 2 tp / (2 tp + fp + fn) over the classes present in the
    split or predicted. class_acc maps each present class ("0", "1", ...) to its accuracy."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    true, predicted = confusion.sum(1), confusion.sum(0)
    present = true > 0
    if not present.any():
        return {"balanced_acc": None, "macro_f1": None, "class_acc": {}}
    recall = tp[present] / true[present]
    seen = present | (predicted > 0)
    f1 = 2 * tp[seen] / (true[seen] + predicted[seen])  # 2tp + fp + fn = true + predicted
    return {"balanced_acc": recall.mean().item(), "macro_f1": f1.mean().item(),
            "class_acc": {str(c): v for c, v in zip(torch.nonzero(present).flatten().tolist(),
                                                    recall.tolist(), strict=True)}}


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

    A step only keeps its loss and logits (detached: no tensor operation, no copy). The losses are
    summed in float64 every KEEP_STEPS steps counted from the epoch's start and at its end, so the
    grouping, and with it every bit of train/loss, is the same whether the epoch ran in one go or
    was cut by an interrupt and resumed (`cut` saves the losses not summed yet). The correct
    predictions are a count, the same whenever taken: the kept logits are counted at those points,
    when asked, or once they hold KEEP_ELEMENTS numbers. Why: each tensor operation costs a step
    ~10 us here (cold caches after the optimizer's kernels); summing and counting at every step
    made the MLP's MNIST epoch 3-5% slower (`make bench`).
    """

    KEEP_STEPS = 1024
    KEEP_ELEMENTS = 1 << 22  # 16 MB of float32 logits at most (1,000 classes: 16 steps of 256)

    def __init__(self, device: torch.device, count_correct: bool = True):
        """count_correct: False for regression (no classes: the outputs are not kept)."""
        self.device, self.count_correct = device, count_correct
        self.loss = torch.zeros((), dtype=torch.float64, device=device)  # the steps summed so far
        self.penalty = torch.zeros((), device=device)
        self._correct = torch.zeros((), dtype=torch.long, device=device)
        self._losses: list[torch.Tensor] = []  # not summed yet, each with its share of the batch
        self._shares: list[float] = []
        self._logits: list[torch.Tensor] = []  # not counted yet, with their labels
        self._labels: list[torch.Tensor] = []
        self._held = 0  # numbers in _logits
        self.grad_norms: list[torch.Tensor] = []

    def add_step(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, share: float,
                 penalty: torch.Tensor | None = None, grad_norm: torch.Tensor | None = None) -> None:
        """Keep a step's loss and logits; its penalty and sampled gradient norm, when it has them."""
        if penalty is not None:
            self.penalty.add_(penalty.detach(), alpha=share)
        if grad_norm is not None:
            self.grad_norms.append(grad_norm)
        self._losses.append(loss.detach())
        self._shares.append(share)
        if self.count_correct:
            self._logits.append(out.detach())
            self._labels.append(y)
            self._held += out.numel()
        if len(self._losses) == self.KEEP_STEPS:
            self.loss, self._losses, self._shares = self.loss_sum(), [], []
            self.correct()
        elif self._held >= self.KEEP_ELEMENTS:
            self.correct()

    def loss_sum(self) -> torch.Tensor:
        """The loss summed over the epoch's samples so far, in float64 (keeps what is not summed yet)."""
        if not self._losses:
            return self.loss
        shares = torch.tensor(self._shares, dtype=torch.float64, device=self.device)
        return self.loss + torch.stack(self._losses).double() @ shares

    def correct(self) -> torch.Tensor:
        """The correct predictions of the epoch so far (a count: the same whenever it is taken)."""
        if self._logits:
            self._correct += (torch.cat(self._logits).argmax(1) == torch.cat(self._labels)).sum()
            self._logits, self._labels, self._held = [], [], 0
        return self._correct

    @classmethod
    def resumed(cls, part: dict, device: torch.device, count_correct: bool = True) -> EpochSums:
        """The sums of an epoch an interrupt cut short, as its checkpoint saved them."""
        sums = cls(device, count_correct)
        sums.loss = part["loss_sum"].to(device, torch.float64)
        sums.penalty = part["reg_sum"].to(device)
        sums._correct = part["correct"].to(device)
        sums.grad_norms = list(part["grad_norms"].to(device).unbind())
        # a checkpoint of nnopt before 2026-12 has no "losses": its loss_sum holds every step so far
        sums._losses = list(part["losses"].to(device).unbind()) if "losses" in part else []
        sums._shares = list(part.get("shares", []))
        return sums

    def cut(self, epoch: int, step: int, order_state: torch.Tensor, base_lr: float) -> dict[str, Any]:
        """What a checkpoint needs to finish this epoch later (same order, same sums so far)."""
        return {"epoch": epoch, "step": step, "generator": order_state, "base_lr": base_lr,
                "loss_sum": self.loss, "reg_sum": self.penalty, "correct": self.correct(),
                "losses": torch.stack(self._losses) if self._losses else torch.zeros(0),
                "shares": list(self._shares),
                "grad_norms": torch.stack(self.grad_norms) if self.grad_norms else torch.zeros(0)}
