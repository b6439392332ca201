"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a student learns from a teacher's soft targets.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

The T^2 factor keeps the soft-target gradients on the same scale as the hard-target ones when T
changes (their magnitude falls as 1/T^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                 temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, y)
    return alpha * t * t * soft + (1 - alpha) * hard


def teacher_loss(teacher: nn.Module, temperature: float, alpha: float):
    """A Trainer loss_fn: the distillation loss against `teacher`'s logits on the same batch."""
    teacher.eval()

    def loss_fn(out: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        return distill_loss(out, target, y, temperature, alpha)

    return loss_fn
