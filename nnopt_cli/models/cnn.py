"""LeNet-5 style convolutional network for 2-D images (conf/model/cnn.yaml)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn


def cnn(input_shape: Sequence[int], num_classes: int, act: Callable[[], nn.Module], *,
        channels: Sequence[int] = (6, 16), fc: Sequence[int] = (120, 84), kernel_size: int = 5,
        dropout: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    """LeNet-5 style: [Conv -> (BN) -> act -> MaxPool2] per entry of `channels`, then an MLP head.

    The first convolution pads so 28x28 inputs keep LeNet-5's 32x32 geometry (28 -> 14 -> 5).
    """
    if len(input_shape) != 3:
        raise ValueError(f"model cnn needs images (channels, height, width); this dataset gives {tuple(input_shape)}")
    c_in, h, w = input_shape
    layers: list[nn.Module] = []
    for i, c_out in enumerate(channels):
        pad = kernel_size // 2 if i == 0 else 0
        layers.append(nn.Conv2d(c_in, c_out, kernel_size, padding=pad))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [act(), nn.MaxPool2d(2)]
        h, w = (h + 2 * pad - kernel_size + 1) // 2, (w + 2 * pad - kernel_size + 1) // 2
        c_in = c_out
    if h < 1 or w < 1:
        raise ValueError(f"input {tuple(input_shape)} too small for {len(channels)} conv blocks")
    layers.append(nn.Flatten())
    width = c_in * h * w
    for f in fc:
        layers += [nn.Linear(width, f), act()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = f
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
