"""Explicit penalty terms added to the loss (conf/regularizer/*.yaml), composable as a list.

These are separate from an optimizer's `weight_decay`: the penalty is part of the loss the
gradients are taken of, so every optimizer sees the same objective. Only weight matrices and
kernels are penalized (parameters with ndim > 1); biases and norm-layer scales are not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn


class Penalty:
    """sum over terms: l1 * sum|w| + l2 * sum w^2 (elastic = a mix of both). Penalty() is no
    penalty: add_to leaves the loss as it is, so the training step needs no branch for it."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1, self.l2 = l1, l2
        self.enabled = bool(l1 or l2)

    @classmethod
    def from_config(cls, terms: Mapping[str, Mapping[str, float]]) -> Penalty | None:
        l1 = l2 = 0.0
        for name, p in terms.items():
            if name == "l1":
                l1 += p["weight"]
            elif name == "l2":
                l2 += p["weight"]
            elif name == "elastic":
                l1 += p["weight"] * p["l1_ratio"]
                l2 += p["weight"] * (1 - p["l1_ratio"])
            else:
                raise ValueError(f"unknown regularizer {name!r}")
        return cls(l1, l2) if (l1 or l2) else None

    @staticmethod
    def penalized(model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.ndim > 1]

    def add_to(self, loss: torch.Tensor,
               params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss + penalty, penalty); (loss, None) when there is no penalty."""
        if not self.enabled:
            return loss, None
        reg = self(params)
        return loss + reg, reg

    def __call__(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        params = list(params)
        total = params[0].new_zeros(())
        if self.l1:
            total = total + self.l1 * sum(p.abs().sum() for p in params)
        if self.l2:
            total = total + self.l2 * sum(p.pow(2).sum() for p in params)
        return total
