"""Per-layer numbers of a model: which modules are its layers, their norms, and a probe of activations.

A layer is a Linear or Conv module; its activation is the first activation module that follows it
in `model.named_modules()` order (Linear -> [BatchNorm] -> ReLU in nnopt's models). A probe runs a
fixed batch through the model in eval mode (no dropout, BatchNorm's running statistics left as they
are) with forward hooks that are removed afterwards, and keeps every number as a tensor so the
caller syncs with the device once.

Dead unit (ReLU family): its pre-activation is <= 0 for every probe sample (and every position of a
conv channel), so a ReLU outputs 0 for all of them. Saturated (sigmoid, tanh): the share of
activation values within `saturation` of the function's bounds, where its gradient nearly vanishes
(Glorot & Bengio 2010).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# units that die: the pre-activation is <= 0 for every input
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish)
# units that saturate: the output's bounds
BOUNDS: dict[type[nn.Module], tuple[float, float]] = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0),
                                                       nn.Hardtanh: (-1.0, 1.0)}


@dataclass
class Layer:
    name: str
    module: nn.Module
    act_name: str | None = None
    act: nn.Module | None = None
    kind: str = field(init=False, default="")
    shape: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.kind = type(self.module).__name__
        self.shape = shape_text(self.module)


def shape_text(m: nn.Module) -> str:
    """'784x256' (in x out features), '1x16 k3x3' (in x out channels, kernel) for plots' labels."""
    if isinstance(m, nn.Linear):
        return f"{m.in_features}x{m.out_features}"
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return f"{m.in_channels}x{m.out_channels} k{'x'.join(map(str, m.kernel_size))}"
    w = getattr(m, "weight", None)
    return "x".join(map(str, w.shape)) if isinstance(w, torch.Tensor) else ""


def _activation_kind(m: nn.Module) -> str | None:
    if isinstance(m, RELU_FAMILY):
        return "relu"
    if isinstance(m, tuple(BOUNDS)):
        return "bounded"
    return None


def find_layers(model: nn.Module) -> list[Layer]:
    layers: list[Layer] = []
    for name, m in model.named_modules():
        if isinstance(m, LAYER_TYPES):
            layers.append(Layer(name or type(m).__name__, m))
        elif _activation_kind(m) is not None and layers and layers[-1].act is None:
            layers[-1].act_name, layers[-1].act = name, m
    return layers


def _per_unit(t: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (C, N * ...): one row per unit (feature or conv channel)."""
    return t.detach().transpose(0, 1).reshape(t.shape[1], -1)


def _bounds(m: nn.Module) -> tuple[float, float]:
    if isinstance(m, nn.Hardtanh):
        return float(m.min_val), float(m.max_val)
    return next(b for cls, b in BOUNDS.items() if isinstance(m, cls))


def weight_norms(layers: list[Layer]) -> list[torch.Tensor]:
    return [layer.module.weight.detach().float().norm() for layer in layers]


def grad_norms(layers: list[Layer]) -> list[torch.Tensor | None]:
    return [None if layer.module.weight.grad is None else layer.module.weight.grad.detach().float().norm()
            for layer in layers]


def snapshot(layers: list[Layer]) -> list[torch.Tensor]:
    return [layer.module.weight.detach().clone() for layer in layers]


def update_ratios(layers: list[Layer], before: list[torch.Tensor]) -> list[torch.Tensor]:
    """||W_after - W_before|| / ||W_before|| per layer (Karpathy's ~1e-3 rule of thumb)."""
    return [(layer.module.weight.detach().float() - w.float()).norm() / w.float().norm().clamp_min(1e-30)
            for layer, w in zip(layers, before, strict=True)]


@torch.no_grad()
def probe(model: nn.Module, layers: list[Layer], x: torch.Tensor, saturation: float) -> dict[str, dict]:
    """name -> {out_mean, out_std[, act_mean, act_std, dead | saturated, units, count]} as tensors."""
    stats: dict[str, dict] = {layer.name: {} for layer in layers}

    def on_output(name: str):
        def hook(_m, _inputs, out):
            o = out.detach().float()
            stats[name].update(out_mean=o.mean(), out_std=o.std(), units=o.shape[1])
        return hook

    def on_activation(name: str, act: nn.Module):
        kind = _activation_kind(act)

        def hook(_m, inputs, out):
            pre, o = inputs[0].detach(), out.detach().float()
            s = stats[name]
            s.update(act_mean=o.mean(), act_std=o.std())
            if kind == "relu":
                s["dead_units"] = (~_per_unit(pre).gt(0).any(dim=1)).sum()
                s["dead"] = s["dead_units"] / pre.shape[1]
            else:
                lo, hi = _bounds(act)
                near = (o <= lo + saturation) | (o >= hi - saturation)
                s["saturated_values"] = near.sum()
                s["values"] = near.numel()
                s["saturated"] = near.float().mean()
        return hook

    handles = []
    was_training = model.training
    model.eval()
    try:
        for layer in layers:
            handles.append(layer.module.register_forward_hook(on_output(layer.name)))
            if layer.act is not None:
                handles.append(layer.act.register_forward_hook(on_activation(layer.name, layer.act)))
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def totals(stats: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Shares over the whole model: dead units of all ReLU-family layers, saturated values of all
    sigmoid/tanh layers (absent when the model has none)."""
    out: dict[str, torch.Tensor] = {}
    dead = [(s["dead_units"], s["units"]) for s in stats.values() if "dead_units" in s]
    if dead:
        out["dead_share"] = torch.stack([d for d, _ in dead]).sum() / sum(u for _, u in dead)
    sat = [(s["saturated_values"], s["values"]) for s in stats.values() if "saturated_values" in s]
    if sat:
        out["saturated_share"] = torch.stack([v for v, _ in sat]).sum() / sum(n for _, n in sat)
    return out
