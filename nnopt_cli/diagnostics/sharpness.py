"""Sharpness of the training loss at the current weights: the top Hessian eigenvalue and the trace.

Both need only Hessian-vector products Hv, computed by double backward: one forward and backward
with create_graph=True builds the gradient g(w) once, then each Hv = d(g . v)/dw is one more
backward through that graph (Pearlmutter 1994). No dense Hessian is ever formed.

    top eigenvalue  power iteration v <- Hv / ||Hv||, Rayleigh quotient v.Hv (the eigenvalue of
                    largest magnitude: at a minimum, the top one; Keskar et al. 2017's sharpness)
    trace           Hutchinson: E[z.Hz] over Rademacher z (+-1 entries), reported with its std error

The loss is the mean cross-entropy of the model in eval mode (no dropout, BatchNorm's running
statistics) on a fixed batch, so it is a deterministic function of the weights. Random vectors
come from the caller's torch.Generator, never the global one, and .grad is left untouched
(torch.autograd.grad returns gradients instead of accumulating them).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Vec = list[torch.Tensor]


def _dot(a: Vec, b: Vec) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def _norm(a: Vec) -> torch.Tensor:
    return _dot(a, a).sqrt()


class HessianOperator:
    """v -> H v for the loss of `model` on (x, y), the parameters that require grad."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy):
        self.params = [p for p in model.parameters() if p.requires_grad]
        with torch.enable_grad():
            self.loss = loss_fn(model(x).float(), y)
            self.grads = torch.autograd.grad(self.loss, self.params, create_graph=True)

    def __call__(self, v: Vec) -> Vec:
        with torch.enable_grad():
            hv = torch.autograd.grad(self.grads, self.params, grad_outputs=v, retain_graph=True)
        return [h.detach() for h in hv]

    def random(self, generator: torch.Generator, rademacher: bool = False) -> Vec:
        """A random vector shaped like the parameters, drawn on the CPU from `generator`."""
        out = []
        for p in self.params:
            if rademacher:
                r = torch.randint(0, 2, p.shape, generator=generator).mul_(2).sub_(1)
            else:
                r = torch.randn(p.shape, generator=generator)
            out.append(r.to(device=p.device, dtype=p.dtype))
        return out


def top_eigenvalue(hvp: HessianOperator, generator: torch.Generator, iters: int = 20,
                   tol: float = 1e-3) -> tuple[float, int, bool]:
    """Power iteration: (eigenvalue of largest magnitude, iterations used, converged). Stops when
    the Rayleigh quotient changes by less than tol relative to its size."""
    v = hvp.random(generator)
    n = _norm(v)
    v = [x / n for x in v]
    value = math.nan
    for i in range(1, iters + 1):
        hv = hvp(v)
        new = _dot(v, hv).item()
        norm = _norm(hv)
        if norm.item() == 0.0:  # v lies in the null space: the Hessian is 0 along it
            return 0.0, i, True
        v = [x / norm for x in hv]
        if math.isfinite(value) and abs(new - value) <= tol * max(abs(new), 1e-12):
            return new, i, True
        value = new
    return value, iters, False


def hutchinson_trace(hvp: HessianOperator, generator: torch.Generator, samples: int = 10) -> tuple[float, float]:
    """(trace estimate, its standard error) from `samples` Rademacher vectors."""
    values = []
    for _ in range(samples):
        z = hvp.random(generator, rademacher=True)
        values.append(_dot(z, hvp(z)).item())
    t = torch.tensor(values, dtype=torch.float64)
    stderr = (t.std() / math.sqrt(samples)).item() if samples > 1 else math.nan
    return t.mean().item(), stderr


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, iters: int = 20, tol: float = 1e-3,
            trace_samples: int = 10, seed: int = 0) -> dict[str, float]:
    """Top eigenvalue and Hutchinson trace of the loss on (x, y), the model's mode restored."""
    was_training = model.training
    model.eval()
    try:
        hvp = HessianOperator(model, x, y)
        g = torch.Generator().manual_seed(seed)
        top, used, converged = top_eigenvalue(hvp, g, iters, tol)
        # not converged: the top two eigenvalues are close; the value is still a lower bound on |lambda_max|
        out = {"loss": hvp.loss.item(), "top_eigenvalue": top, "power_iters": used, "converged": converged,
               "samples": len(x)}
        if trace_samples > 0:
            out["trace"], out["trace_stderr"] = hutchinson_trace(hvp, g, trace_samples)
        return out
    finally:
        model.train(was_training)
