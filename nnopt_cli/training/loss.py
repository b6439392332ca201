"""The training loss (conf/loss/*.yaml): cross-entropy, label smoothing, mean squared error, Huber.

Every loss maps (outputs, targets) to the batch mean. Classification (integer labels): cross_entropy,
label_smoothing, and mse between softmax(logits) and the one-hot target. Regression (dataset=regression,
float targets, one output): mse and huber on the output itself. The penalty terms of `regularizer` are
added to it in the training step; distillation brings its own loss. Validation and test always report
one measure as `val/loss` / `test/loss` whatever the training loss (classification: cross-entropy;
regression: the MSE), so runs with different training losses compare on one scale.

`loss.class_weights` (cross_entropy, label_smoothing) weighs each sample's loss by its class:
`balanced` gives class c the weight n / (C * n_c) of the training split (scikit-learn's
compute_class_weight("balanced")), a list gives the weights themselves. The batch mean is then
torch's weighted mean: sum(w_y * loss) / sum(w_y).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from nnopt_cli.config.datasets import REGRESSION
from nnopt_cli.errors import ConfigError
from nnopt_cli.training.checks import check_loss


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error between softmax(logits) and the one-hot target, averaged over the batch
    and the classes (torch's F.mse_loss with its default reduction)."""
    target = F.one_hot(y, out.shape[1]).to(out.dtype)
    return F.mse_loss(torch.softmax(out, dim=1), target)


def regression_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain mean squared error of the one output against the target."""
    return F.mse_loss(out.reshape(y.shape), y)


def huber(out: torch.Tensor, y: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Huber loss (torch's F.huber_loss): squared below `delta`, linear above it."""
    return F.huber_loss(out.reshape(y.shape), y, delta=delta)


REGRESSION_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"mse": regression_mse, "huber": huber}

LABEL_SMOOTHING = 0.1  # label_smoothing's default share of the target spread over the classes

LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": lambda out, y, class_weights=None: F.cross_entropy(out, y, weight=class_weights),
    "label_smoothing": lambda out, y, smoothing=LABEL_SMOOTHING, class_weights=None: F.cross_entropy(
        out, y, weight=class_weights, label_smoothing=smoothing),
    "mse": mse,
}
def class_weights(setting, class_counts: torch.Tensor | None) -> torch.Tensor | None:
    """The weight of each class (on the counts' device), or None for an unweighted loss."""
    if setting is None:
        return None
    if class_counts is None:
        raise ConfigError("loss.class_weights", setting, "null here (the training split's classes are unknown)")
    counts = class_counts.double()
    classes = len(counts)
    if setting == "balanced":
        if not (counts > 0).all():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise ConfigError("loss.class_weights", setting, f"null or a list: class(es) {missing} have no "
                              "training sample, so their balanced weight n / (C * n_c) is undefined")
        return (counts.sum() / (classes * counts)).float()
    check_loss({"name": "cross_entropy", "class_weights": setting}, classes)
    return torch.tensor(setting, dtype=torch.float32, device=counts.device)


def make_loss(node: dict | None, class_counts: torch.Tensor | None = None, task: str = "classification"
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(outputs, targets) -> the batch mean of the configured loss; None = cross-entropy (old run folders).
    class_counts: the training samples per class, for loss.class_weights."""
    node = node or {"name": "cross_entropy"}
    fn = (REGRESSION_LOSSES if task == REGRESSION else LOSSES)[node["name"]]
    settings = {k: v for k, v in node.items() if k != "name" and v is not None}
    if "class_weights" in settings:
        settings["class_weights"] = class_weights(settings["class_weights"], class_counts)
    return (lambda out, y: fn(out, y, **settings)) if settings else fn
