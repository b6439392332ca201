"""Gradient clipping (conf/grad_clip/*.yaml): torch.nn.utils' own clip_grad_norm_ / clip_grad_value_,
and adaptive gradient clipping (mode=agc, Brock et al. 2021, pytorch_optimizer.agc): each output
unit's gradient is scaled down to at most clip_factor times that unit's weight norm. As in the
paper, the classifier head (the model's last nn.Linear) is not clipped unless skip_head=false.

GradClip is called once per step, after backward (and after AMP unscaling), and returns the
global gradient norm when asked to measure it: clip_grad_norm_ computes it anyway, so the
sampled `grad_norm` of the epoch row costs nothing extra with mode=norm.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class GradClip:
    def __init__(self, mode: str = "none", max_norm: float = 1.0, norm_type: float = 2.0, clip_value: float = 0.5,
                 clip_factor: float = 0.01, eps: float = 1e-3, skip: Iterable[torch.Tensor] = ()):
        self.mode, self.max_norm, self.norm_type, self.clip_value = mode, max_norm, norm_type, clip_value
        self.clip_factor, self.eps = clip_factor, eps
        self.skip = {id(p) for p in skip}  # agc: parameters left unclipped (the head)

    @classmethod
    def from_config(cls, node: dict, model: nn.Module | None = None) -> GradClip:
        node = dict(node)
        skip = []
        if node.pop("skip_head", False) and model is not None:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            skip = list(linears[-1].parameters()) if linears else []
        return cls(**node, skip=skip)

    def __call__(self, model: nn.Module, measure: bool) -> torch.Tensor | None:
        """Clip the gradients of `model` in place; their global L2 norm (before clipping) if `measure`."""
        if self.mode == "none" and not measure:
            return None  # the common step: nothing to do, not even listing the parameters
        params = list(model.parameters())
        if self.mode == "norm":
            return nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type).detach()
        norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]) if measure else None
        if self.mode == "value":
            nn.utils.clip_grad_value_(params, self.clip_value)
        if self.mode == "agc":
            from pytorch_optimizer import agc  # a heavy import (its whole optimizer zoo): only when used

            with torch.no_grad():
                for p in params:
                    if p.grad is not None and id(p) not in self.skip:
                        p.grad.copy_(agc(p, p.grad, agc_eps=self.eps, agc_clip_val=self.clip_factor))
        return norm
