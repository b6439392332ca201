"""dataset=regression: a seeded synthetic regression task with a known noise floor.

Inputs x ~ N(0, I_d) (d = n_features); targets y = f(x) + sigma * e with e ~ N(0, 1) and f a fixed
random teacher network, tanh(x W1 / sqrt(d) + b1) . w2 / sqrt(h) with every weight N(0, 1) drawn from
`seed` (h = teacher_hidden), so Var f(x) is of order 1. No model can beat a test MSE of sigma^2 in
expectation (the noise is independent of x): summary.json reports it as `noise_floor`.

The inputs are not normalized (they are standard normal already) and the targets never are, so
MSE and RMSE are in the units of y and comparable with the floor.
"""

from __future__ import annotations

import torch


def teacher(x: torch.Tensor, hidden: int, seed: int) -> torch.Tensor:
    """f(x) of the fixed random teacher drawn from `seed` (the same for train and test)."""
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    w1 = torch.randn(d, hidden, generator=g)
    b1 = torch.randn(hidden, generator=g)
    w2 = torch.randn(hidden, generator=g)
    return torch.tanh(x @ w1 / d**0.5 + b1) @ w2 / hidden**0.5


def load(n_train: int, n_test: int, n_features: int, teacher_hidden: int, noise: float, seed: int):
    """x_train, y_train, x_test, y_test: (N, n_features) inputs and (N,) float targets."""
    g = torch.Generator().manual_seed(seed + 1)  # the samples: a stream apart from the teacher's
    n = n_train + n_test
    x = torch.randn(n, n_features, generator=g)
    y = teacher(x, teacher_hidden, seed) + noise * torch.randn(n, generator=g)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]
