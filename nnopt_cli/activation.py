"""Activation functions by name (conf/activation/<name>.yaml)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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
