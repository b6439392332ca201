"""Simulated ("fake") b-bit weight quantization: every weight snapped to a b-bit grid, kept in float.

For the accuracy-vs-bits curve at any width from 8 down to 2 bits, with no kernel to wait for:
the model stays a float model (same file size, same speed), only its weight values are the ones
a b-bit encoding could hold. Symmetric, restricted range (zero is exact, the grid is the same on
both sides, so 2 bits is ternary {-s, 0, s}):

    qmax  = 2^(b-1) - 1
    scale = max|w| / qmax          per tensor, or per output unit (row / output channel)
    w'    = clamp(round(w / scale), -qmax, qmax) * scale      (round half to even)

computed by torch's own fake-quantize ops (torch.fake_quantize_per_tensor_affine /
torch.fake_quantize_per_channel_affine). Biases stay float, as int kernels keep them in int32/float.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

LAYERS = (nn.Linear, nn.Conv2d)
SCALE_RULE = ("symmetric: qmax = 2^(b-1)-1, scale = max|w| / qmax ({granularity}), "
              "w' = clamp(round(w / scale), -qmax, qmax) * scale (round half to even); biases stay float")


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def fake_quantize_weight(w: torch.Tensor, bits: int, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the snapped weight, its scale: a 0-d tensor per tensor, one per output unit per channel)."""
    q = qmax(bits)
    w = w.detach().float()
    tiny = torch.finfo(torch.float32).tiny  # an all-zero tensor/row keeps a valid (positive) scale
    if granularity == "per_tensor":
        scale = (w.abs().max() / q).clamp_min(tiny)
        return torch.fake_quantize_per_tensor_affine(w, float(scale), 0, -q, q), scale
    scale = (w.abs().flatten(1).amax(1) / q).clamp_min(tiny)
    zero = torch.zeros(len(scale), dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -q, q), scale


@torch.no_grad()
def fake_quantize_model(model: nn.Module, bits: int, granularity: str) -> tuple[nn.Module, dict[str, dict]]:
    """A copy of `model` whose Linear/Conv2d weights are snapped to the b-bit grid, and per layer
    the number of distinct weight values and the scales' range (the input model is unchanged)."""
    model = copy.deepcopy(model)
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, LAYERS):
            snapped, scale = fake_quantize_weight(m.weight, bits, granularity)
            m.weight.copy_(snapped.to(m.weight.dtype))
            layers[name] = {"scales": scale.numel(), "scale_min": float(scale.min()), "scale_max": float(scale.max()),
                            "distinct_values": int(torch.unique(m.weight).numel())}
    return model, layers


def packed_bytes(model: nn.Module, bits: int, scales: int, layers: tuple = LAYERS) -> int:
    """Bytes of a b-bit encoding of `model`: b bits per weight of `layers`, a float32 per scale,
    every other parameter (biases, normalization, other layers) in float32; no container overhead."""
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, layers))
    other = sum(p.numel() for p in model.parameters()) - weights
    return -(-weights * bits // 8) + 4 * scales + 4 * other
