"""The checks of the training groups that read only the config's numbers and strings: `precision`,
`grad_clip`, `early_stopping`, `regularizer` and `loss`. Free of torch, so `nnopt train` answers
these errors before importing it; the modules that apply each setting import their names from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nnopt_cli.config.checks import is_num, need_bool, need_choice, need_int, need_keys, need_num
from nnopt_cli.config.datasets import REGRESSION
from nnopt_cli.errors import ConfigError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")
CLIP_MODES = ("none", "norm", "value", "agc")
MONITORS = ("val/loss", "val/acc")
TERMS = ("l1", "l2", "elastic")
CLASSIFICATION_LOSSES = ("cross_entropy", "label_smoothing", "mse")  # loss.py LOSSES
REGRESSION_LOSSES = ("mse", "huber")                                 # loss.py REGRESSION_LOSSES
WEIGHTED = ("cross_entropy", "label_smoothing")  # the losses that take loss.class_weights
WEIGHTS_ALLOWED = "balanced, null, or a list of one weight >= 0 per class, not all 0"


def check_precision(precision: str, device: torch.device | None = None) -> None:
    need_choice("precision", precision, PRECISIONS)
    if precision == "fp16" and device is not None and device.type != "cuda":
        raise ConfigError("precision", "fp16", f"fp16 needs a CUDA device (device is {device}); use fp32 or bf16")


def check_grad_clip(node: dict) -> None:
    need_keys("grad_clip", node, ("mode",))
    need_choice("grad_clip.mode", node["mode"], CLIP_MODES)
    if node["mode"] == "norm":
        need_keys("grad_clip", node, ("max_norm", "norm_type"))
        need_num("grad_clip.max_norm", node["max_norm"], gt=0)
        need_num("grad_clip.norm_type", node["norm_type"], gt=0, finite=False)  # inf: the max-norm
    if node["mode"] == "value":
        need_keys("grad_clip", node, ("clip_value",))
        need_num("grad_clip.clip_value", node["clip_value"], gt=0)
    if node["mode"] == "agc":
        need_keys("grad_clip", node, ("clip_factor", "eps", "skip_head"))
        need_num("grad_clip.clip_factor", node["clip_factor"], gt=0)
        need_num("grad_clip.eps", node["eps"], gt=0)
        need_bool("grad_clip.skip_head", node["skip_head"])


def check_early_stopping(node: dict) -> None:
    need_keys("early_stopping", node, ("enabled",))
    need_bool("early_stopping.enabled", node["enabled"])
    if node["enabled"]:
        need_keys("early_stopping", node, ("monitor", "mode", "patience", "min_delta", "restore_best"))
        need_choice("early_stopping.monitor", node["monitor"], MONITORS)
        need_choice("early_stopping.mode", node["mode"], ("min", "max"))
        need_int("early_stopping.patience", node["patience"], 1)
        need_num("early_stopping.min_delta", node["min_delta"], ge=0)
        need_bool("early_stopping.restore_best", node["restore_best"])


def check_regularizer(terms: dict) -> None:
    for name, p in terms.items():
        need_choice("regularizer", name, TERMS)
        need_num(f"regularizer.{name}.weight", (p or {}).get("weight"), ge=0)
        if name == "elastic":
            need_num("regularizer.elastic.l1_ratio", p.get("l1_ratio"), ge=0, le=1)


def check_loss(node: dict | None, num_classes: int | None = None, task: str = "classification") -> None:
    """num_classes: when the config states it, a list of class weights must have that length."""
    node = node or {"name": "cross_entropy"}
    need_choice("loss.name", node.get("name"), (*CLASSIFICATION_LOSSES, *(n for n in REGRESSION_LOSSES if n not in CLASSIFICATION_LOSSES)))
    if task == REGRESSION and node["name"] not in REGRESSION_LOSSES:
        raise ConfigError("loss", node["name"], "mse or huber for dataset=regression (loss=mse: plain MSE on the "
                          "output; cross_entropy and label_smoothing need classes)")
    if task != REGRESSION and node["name"] not in CLASSIFICATION_LOSSES:
        raise ConfigError("loss", node["name"], "one of " + ", ".join(CLASSIFICATION_LOSSES) + " for a classification dataset "
                          f"(loss={node['name']} is for dataset=regression)")
    if node["name"] == "huber":
        need_num("loss.delta", node.get("delta"), gt=0)
    if node["name"] == "label_smoothing":
        need_num("loss.smoothing", node.get("smoothing"), ge=0, lt=1)
    weights = node.get("class_weights")
    if weights is None:
        return
    if node["name"] not in WEIGHTED:
        raise ConfigError("loss.class_weights", weights, f"null for loss={node['name']} (class weights apply to "
                          + " and ".join(f"loss={n}" for n in WEIGHTED) + ")")
    if weights == "balanced":
        return
    if (not isinstance(weights, list) or not weights or not all(is_num(w) and 0 <= w < float("inf") for w in weights)
            or not any(weights)):
        raise ConfigError("loss.class_weights", weights, WEIGHTS_ALLOWED)
    if num_classes is not None and len(weights) != num_classes:
        raise ConfigError("loss.class_weights", weights, f"{num_classes} weights, one per class of the dataset")

