"""Activation functions by name (conf/activation/<name>.yaml)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from nnopt_cli.config.checks import need_choice, need_num

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def activation_factory(name: str, **params) -> Callable[[], nn.Module]:
    """A zero-argument constructor, so each layer gets its own module instance."""
    cls = ACTIVATIONS[name]
    return lambda: cls(**params)


def check_activation(node: dict) -> None:
    need_choice("activation.name", node.get("name"), tuple(ACTIVATIONS))
    if "negative_slope" in node:
        need_num("activation.negative_slope", node["negative_slope"], ge=0)
