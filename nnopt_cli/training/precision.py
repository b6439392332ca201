"""Numeric precision of the forward pass (`precision=fp32|bf16|fp16`): autocast and loss scaling.

bf16 needs no loss scaling; fp16 (CUDA only) uses torch's GradScaler. LossScaler wraps both so the
training step has one code path: with fp32/bf16 the scaler is disabled and its calls are no-ops
(timm's NativeScaler does the same).
"""

from __future__ import annotations

import contextlib

import torch


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class LossScaler:
    """backward() -> unscale (so clipping sees true gradients) -> step(): GradScaler for fp16."""

    def __init__(self, precision: str):
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                 create_graph: bool = False, unscale: bool = True) -> None:
        """unscale=False: more gradients will be added first (accumulation unscales once, at the last)."""
        if self.scaler is None:
            loss.backward(create_graph=create_graph)
            return
        self.scaler.scale(loss).backward(create_graph=create_graph)
        if unscale:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self):
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state) -> None:
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)
