"""Models (conf/model/<name>.yaml): the registry, the builder and the checks of the `model` group.

A model is a builder `fn(input_shape, num_classes, act, **settings) -> nn.Module`, one module in
this package and one line in MODELS; its YAML names it with `name:` and holds its settings. A
class of your own needs no edit here: `model._target_=my_pkg.MyNet` builds
`MyNet(input_shape, num_classes, act, **settings)` (or without `act` if it takes none).

Models are checked before any data is loaded: the settings are bound to the builder's signature
and a skeleton is built on the meta device (no memory, no time) with the dataset's input shape,
so a bad width or a model that does not fit the input is one line.

A model with lazy modules (nn.LazyLinear, nn.LazyConv2d, ...) is materialized on one zero sample
as soon as it is built, so parameter counts, FLOPs, the optimizer and the initializer all see real
weights; built from lazy modules only, it draws the same initial weights as its eager twin.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from nnopt_cli.config.build import bind, locate, settings
from nnopt_cli.config.checks import need_int, need_int_list, need_num
from nnopt_cli.errors import ConfigError
from nnopt_cli.models.activation import activation_factory, check_activation
from nnopt_cli.models.cnn import cnn
from nnopt_cli.models.cnn1d import cnn1d
from nnopt_cli.models.init import check_init, init_weights
from nnopt_cli.models.mlp import mlp

Builder = Callable[..., nn.Module]

MODELS: dict[str, Builder] = {
    "mlp": mlp,
    "cnn": cnn,
    "cnn1d": cnn1d,
}

# the same kind of model for inputs of the other rank: (channels, length) signals or (c, h, w) images
FOR_RANK = {2: "cnn1d", 3: "cnn"}


def _builder(node: dict) -> tuple[Builder, str]:
    """The model's builder and the key that names it (model.name or model._target_)."""
    if node.get("_target_") is not None:
        return locate("model._target_", node["_target_"]), "model._target_"
    name = node.get("name")
    if name not in MODELS:
        raise ConfigError("model.name", name, "one of " + ", ".join(MODELS) + " (or model._target_=pkg.Class)")
    return MODELS[name], "model.name"


def _takes_activation(fn: Builder) -> bool:
    try:
        return "act" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _model_settings(node: dict) -> dict:
    return {k: v for k, v in settings(node).items() if k != "name"}


def check_model(node: dict, input_shape: Sequence[int] | None = None, num_classes: int = 10) -> None:
    """Check a model config (the run's, or a distillation student's) before any data is loaded."""
    if not isinstance(node, dict):
        raise ConfigError("model", node, "a model config such as {name: mlp, hidden: [256]}")
    fn, _ = _builder(node)
    params = _model_settings(node)
    # the common settings first: their messages name the key and the range
    if "dropout" in params:
        need_num("model.dropout", params["dropout"], ge=0, lt=1)
    for key in ("hidden", "fc"):
        if key in params:
            need_int_list(f"model.{key}", params[key])
    if "channels" in params:
        need_int_list("model.channels", params["channels"], allow_empty=False)
    if "kernel_size" in params:
        need_int("model.kernel_size", params["kernel_size"], 1)
    args = ((1, 28, 28), 10, nn.ReLU) if _takes_activation(fn) else ((1, 28, 28), 10)
    bind("model", fn, args, params)
    if input_shape is not None:
        with torch.device("meta"):  # shapes only: no memory, no initialization cost
            materialize(_call(fn, tuple(input_shape), num_classes, nn.ReLU, params), input_shape)


def has_lazy(model: nn.Module) -> bool:
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters())


def materialize(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """Give lazy modules their shapes by one forward pass of a zero sample (eval mode, no grad:
    no batch-norm statistics move, no dropout draw). Nothing happens to a model without them."""
    if not has_lazy(model):
        return model
    p = next(model.parameters())
    was_training = model.training
    model.train(False)
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError("model", type(model).__name__, "a model whose lazy modules fit the input: "
                          f"{(str(e).splitlines() or [''])[0]} (input shape {tuple(input_shape)})") from None
    finally:
        model.train(was_training)
    return model


def _call(fn: Builder, input_shape, num_classes: int, act, params: dict) -> nn.Module:
    try:
        if _takes_activation(fn):
            model = fn(input_shape, num_classes, act, **params)
        else:
            model = fn(input_shape, num_classes, **params)
    except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: torch's own shape errors
        name = getattr(fn, "__name__", str(fn))
        other = FOR_RANK.get(len(input_shape))
        hint = f"; for this input use model={other}" if name in FOR_RANK.values() and other != name else ""
        raise ConfigError("model", name,
                          f"{(str(e).splitlines() or [''])[0]} (input shape {tuple(input_shape)}){hint}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError("model._target_", getattr(fn, "__qualname__", fn), "a builder returning a torch.nn.Module")
    return model


def make_model(cfg: dict, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build the run's model with its activation and initializer (cfg: the whole run config)."""
    act_node = cfg["activation"]
    act_params = {k: v for k, v in act_node.items() if k != "name"}
    act = activation_factory(act_node["name"], **act_params)
    fn, _ = _builder(cfg["model"])
    model = materialize(_call(fn, tuple(input_shape), num_classes, act, _model_settings(cfg["model"])), input_shape)
    init = cfg["init"]
    init_weights(model, init["name"], act_node["name"],
                 negative_slope=act_params.get("negative_slope", 0.01), mode=init.get("mode", "fan_in"))
    return model


def check(cfg: dict, input_shape: Sequence[int] | None, num_classes: int) -> None:
    """The model, activation and init groups of a run config."""
    check_activation(cfg["activation"])
    check_init(cfg["init"])
    check_model(cfg["model"], input_shape, num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "check", "check_model", "cnn", "cnn1d", "count_params", "make_model", "materialize", "mlp"]
