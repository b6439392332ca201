"""Multi-layer perceptron (conf/model/mlp.yaml and its presets lenet300, mlp_small, mlp_large).

Flattens any input shape, so it works on images and on 1-D signals alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn


def mlp(input_shape: Sequence[int], num_classes: int, act: Callable[[], nn.Module], *,
        hidden: Sequence[int] = (256,), dropout: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    """Flatten -> [Linear -> (BN) -> act -> (Dropout)] * len(hidden) -> Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(act())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
