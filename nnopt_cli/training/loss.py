"""The training loss (conf/loss/*.yaml): cross-entropy, label smoothing, or mean squared error.

Every loss maps (logits, integer labels) to the batch mean. The penalty terms of `regularizer`
are added to it in the training step; distillation brings its own loss. Validation and test
always report cross-entropy as `val/loss` / `test/loss`, so runs with different training losses
compare on one scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from nnopt_cli.config.checks import need_choice, need_num


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error between softmax(logits) and the one-hot target, averaged over the batch
    and the classes (torch's F.mse_loss with its default reduction)."""
    target = F.one_hot(y, out.shape[1]).to(out.dtype)
    return F.mse_loss(torch.softmax(out, dim=1), target)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": cross_entropy,
    "label_smoothing": lambda out, y, smoothing=0.1: F.cross_entropy(out, y, label_smoothing=smoothing),
    "mse": mse,
}


def check_loss(node: dict | None) -> None:
    node = node or {"name": "cross_entropy"}
    need_choice("loss.name", node.get("name"), tuple(LOSSES))
    if node["name"] == "label_smoothing":
        need_num("loss.smoothing", node.get("smoothing"), ge=0, lt=1)


def make_loss(node: dict | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(logits, labels) -> the batch mean of the configured loss; None = cross-entropy (old run folders)."""
    node = node or {"name": "cross_entropy"}
    fn = LOSSES[node["name"]]
    settings = {k: v for k, v in node.items() if k != "name"}
    return (lambda out, y: fn(out, y, **settings)) if settings else fn
