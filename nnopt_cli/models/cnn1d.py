"""A 1-D CNN for signals shaped (channels, length), e.g. MNIST-1D's (1, 40) (conf/model/cnn1d.yaml).

The default is the CNN of the MNIST-1D paper (Greydanus 2020; greydanus/mnist1d notebooks/models.py
ConvBase): three convolutions of 25 channels (kernels 5, 3, 3, stride 2, padding 1), each followed
by the activation, then one linear layer on the flattened features (40 -> 19 -> 10 -> 5 positions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn


def cnn1d(input_shape: Sequence[int], num_classes: int, act: Callable[[], nn.Module], *,
          channels: Sequence[int] = (25, 25, 25), kernels: Sequence[int] = (5, 3, 3), stride: int = 2,
          padding: int = 1, dropout: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    """[Conv1d -> (BN) -> act] per entry of `channels` (kernel `kernels[i]`) -> Flatten -> (Dropout) -> Linear."""
    if len(input_shape) != 2:
        raise ValueError(f"model cnn1d needs signals (channels, length); this dataset gives {tuple(input_shape)}")
    if len(kernels) != len(channels):
        raise ValueError(f"model.kernels has {len(kernels)} entries for {len(channels)} model.channels")
    if any(k < 1 for k in kernels) or stride < 1 or padding < 0:
        raise ValueError("model.kernels and model.stride must be >= 1, model.padding >= 0")
    c_in, length = input_shape
    layers: list[nn.Module] = []
    for c_out, k in zip(channels, kernels, strict=True):
        layers.append(nn.Conv1d(c_in, c_out, k, stride=stride, padding=padding))
        if batch_norm:
            layers.append(nn.BatchNorm1d(c_out))
        layers.append(act())
        length = (length + 2 * padding - k) // stride + 1
        if length < 1:
            raise ValueError(f"input {tuple(input_shape)} too short for {len(channels)} conv layers")
        c_in = c_out
    layers.append(nn.Flatten())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(c_in * length, num_classes))
    return nn.Sequential(*layers)
