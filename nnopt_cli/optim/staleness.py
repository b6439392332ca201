"""Stale gradients (async_sgd=stale): asynchronous SGD's delay without its noise, in one process.

The gradient applied at step t is the one computed at step t - k, on the weights of step t - k (the
fixed-delay model of asynchronous SGD, e.g. Lian et al. 2015), taken from a queue of the last k
gradients. The first k steps compute and queue a gradient but apply nothing: the weights and the
optimizer's state stay where they started, as when k workers all begin from the same weights. The run's
last k gradients are never applied. Weight decay inside the optimizer acts on the current weights; a
regularizer's penalty is part of the (stale) gradient; clipping acts on each gradient when computed.

The step asks `ready(optimizer)` between backward and optimizer.step() (optim.optimizers.optimizer_step);
with k = 0 it answers True at once and touches nothing, so an ordinary run takes the same path.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch.optim import Optimizer

from nnopt_cli.config.checks import need_int
from nnopt_cli.errors import ConfigError

MAX_STALENESS = 10_000  # gradients kept in memory: more is a typo


class StaleGradients:
    """A queue of the last `staleness` gradients; with staleness 0 it does nothing."""

    def __init__(self, staleness: int = 0):
        self.staleness = staleness
        self.queue: deque[list[torch.Tensor | None]] = deque()

    @classmethod
    def from_config(cls, node: dict | None) -> StaleGradients:
        if node and node.get("mode") == "stale":
            return cls(int(node["staleness"]))
        return cls()

    def ready(self, optimizer: Optimizer) -> bool:
        """Called with this step's gradients in the parameters: queue them and put the gradients of
        `staleness` steps ago in their place. False while the queue is still filling: the caller
        then applies nothing this step."""
        if self.staleness == 0:
            return True
        params = [p for group in optimizer.param_groups for p in group["params"]]
        # copies: an optimizer or a zero_grad(set_to_none=False) may change .grad in place later
        self.queue.append([None if p.grad is None else p.grad.detach().clone() for p in params])
        if len(self.queue) <= self.staleness:
            return False
        for p, grad in zip(params, self.queue.popleft(), strict=True):
            p.grad = grad
        return True

    def state_dict(self) -> dict[str, Any] | None:
        return {"queue": [list(g) for g in self.queue]} if self.staleness else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.queue = deque(list(g) for g in (state or {}).get("queue", []))


NO_DELAY = StaleGradients()


def check_staleness(node: dict, step_kind: str, precision: str) -> None:
    """async_sgd=stale: the staleness, and an optimizer whose step applies one gradient it is handed."""
    need_int("async_sgd.staleness", node.get("staleness"), 0, MAX_STALENESS)
    if step_kind != "plain":
        raise ConfigError("async_sgd", "stale", f"needs an optimizer with step=plain (this one: step={step_kind}, "
                                                "which computes its own gradients inside the step); "
                                                "use e.g. optimizer=sgd, momentum or adam")
    if precision == "fp16":
        raise ConfigError("async_sgd", "stale", "cannot run with precision=fp16 (GradScaler checks the fresh "
                                                "gradients, not the stale ones it would apply); use fp32 or bf16")
