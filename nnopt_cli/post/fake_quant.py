"""Simulated ("fake") b-bit weight quantization: every weight snapped to a b-bit grid, kept in float.

For the accuracy-vs-bits curve at any width from 8 down to 1 bit, with no kernel to wait for: the
model stays a float model (same file size, same speed), only its weight values are the ones a b-bit
encoding could hold. One scale per group: the whole tensor (per_tensor) or one output unit (row /
output channel, per_channel).

The scale rule picks the clipping range c of a group from its weights w:

    max         c = max|w|                          (nothing is clipped)
    mean        c = mean_factor * mean|w|           (the group's mean magnitude times a stated factor)
    percentile  c = the `percentile`-th percentile of |w|   (outliers clipped)
    mse         c = the candidate t * max|w|, t in {1/100, ..., 100/100}, whose grid reconstructs w
                with the least squared error

symmetric   qmax = 2^(b-1) - 1, scale = c / qmax, w' = clamp(round(w / scale), -qmax, qmax) * scale
            (restricted range: zero is exact, 2 bits is ternary {-s, 0, s})
asymmetric  an unsigned range [0, 2^b - 1] with a zero point: with lo..hi the group's range (min..max
            of w, or the (100 - p)-th..p-th percentiles), scale = (hi - lo) / (2^b - 1),
            zp = clamp(round(-lo / scale), 0, 2^b - 1), w' = (clamp(round(w / scale) + zp, 0, 2^b - 1) - zp) * scale
1 bit       binarization (XNOR-Net): w' = sign(w) * c, sign(0) = +1, so every group holds exactly two
            values; with scale=mean and mean_factor=1, c = mean|w| is the magnitude that minimises
            ||w - c sign(w)||^2 (Rastegari et al. 2016)

b >= 2 rounds with torch's own fake-quantize op (torch.fake_quantize_per_channel_affine, round half
to even). Biases stay float, as int kernels keep them in int32/float.

`BinarizeSTE` is the 1-bit forward with BinaryConnect's straight-through gradient (Courbariaux et
al. 2015): the gradient reaches the real-valued weight unchanged where |w| <= 1 and is zero beyond;
qat.py trains with it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from nnopt_cli.config.stages import scale_rule

LAYERS = (nn.Linear, nn.Conv2d)
MSE_GRID = 100  # candidates t * max|w|, t = 1/100 .. 1 (the mse rule)
TINY = torch.finfo(torch.float32).tiny  # an all-zero tensor/row keeps a valid (positive) scale


@dataclass(frozen=True)
class Rule:
    """How a weight tensor is snapped: bit width, scale group, scale rule and scheme."""

    bits: int
    granularity: str = "per_tensor"  # per_tensor | per_channel
    scale: str = "max"  # one of SCALES
    scheme: str = "symmetric"  # one of SCHEMES
    percentile: float = 99.9  # the percentile rule's p, in (0, 100]
    mean_factor: float = 1.0  # the mean rule's factor, > 0

    @classmethod
    def from_settings(cls, s: dict) -> Rule:
        """From post.quantize (keys added later take their defaults in an older folder's settings)."""
        return cls(s.get("bits", 8), s["granularity"], scale_rule(s), s.get("scheme", "symmetric"),
                   float(s.get("percentile", 99.9)), float(s.get("mean_factor", 1.0)))

    def describe(self) -> str:
        """The rule in words, for the summary."""
        clip = {"max": "c = max|w|", "mean": f"c = {self.mean_factor:g} * mean|w|",
                "percentile": f"c = {self.percentile:g}th percentile of |w|",
                "mse": f"c = the t * max|w| (t = 1/{MSE_GRID} .. 1) with the least squared error"}[self.scale]
        group = self.granularity.replace("_", " ")
        if self.bits == 1:
            return f"binary: w' = sign(w) * c, sign(0) = +1, {clip} ({group}); biases stay float"
        if self.scheme == "asymmetric":
            lo_hi = ("lo, hi = min(w), max(w)" if self.scale == "max" else
                     f"lo, hi = {100 - self.percentile:g}th, {self.percentile:g}th percentiles of w")
            return (f"asymmetric: {lo_hi} ({group}), scale = (hi - lo) / (2^b - 1), zp = clamp(round(-lo / scale), "
                    "0, 2^b - 1), w' = (clamp(round(w / scale) + zp, 0, 2^b - 1) - zp) * scale; biases stay float")
        return (f"symmetric: qmax = 2^(b-1)-1, {clip} ({group}), scale = c / qmax, "
                "w' = clamp(round(w / scale), -qmax, qmax) * scale (round half to even); biases stay float")


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _groups(w: torch.Tensor, granularity: str) -> torch.Tensor:
    """The weight as rows, one per scale group."""
    return w.reshape(1, -1) if granularity == "per_tensor" else w.reshape(len(w), -1)


def _snap_symmetric(rows: torch.Tensor, clip: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows on the grid of clipping range `clip` per row, the scale per row)."""
    if bits == 1:
        c = clip.clamp_min(TINY)
        return torch.where(rows >= 0, c[:, None], -c[:, None]), c
    q = qmax(bits)
    scale = (clip / q).clamp_min(TINY)
    zero = torch.zeros(len(scale), dtype=torch.int32, device=rows.device)
    return torch.fake_quantize_per_channel_affine(rows, scale, zero, 0, -q, q), scale


def _mse_clip(rows: torch.Tensor, bits: int) -> torch.Tensor:
    """Per row, the candidate clipping range t * max|w| with the least squared reconstruction error."""
    top = rows.abs().amax(1)
    best_err = torch.full_like(top, float("inf"))
    best = top.clone()
    for i in range(1, MSE_GRID + 1):
        c = top * (i / MSE_GRID)
        err = (_snap_symmetric(rows, c, bits)[0] - rows).pow(2).sum(1)
        better = err < best_err  # strict: ties keep the smaller candidate
        best_err, best = torch.where(better, err, best_err), torch.where(better, c, best)
    return best


def _clip(rows: torch.Tensor, rule: Rule) -> torch.Tensor:
    a = rows.abs()
    if rule.scale == "max":
        return a.amax(1)
    if rule.scale == "mean":
        return rule.mean_factor * a.mean(1)
    if rule.scale == "percentile":
        return torch.quantile(a, rule.percentile / 100, dim=1)  # linear interpolation, as numpy's
    return _mse_clip(rows, rule.bits)


def _snap_asymmetric(rows: torch.Tensor, rule: Rule) -> tuple[torch.Tensor, torch.Tensor]:
    top = 2 ** rule.bits - 1
    if rule.scale == "max":
        lo, hi = rows.amin(1), rows.amax(1)
    else:  # percentile
        lo = torch.quantile(rows, 1 - rule.percentile / 100, dim=1)
        hi = torch.quantile(rows, rule.percentile / 100, dim=1)
    lo, hi = lo.clamp_max(0), hi.clamp_min(0)  # zero stays on the grid (a zero weight stays zero)
    scale = ((hi - lo) / top).clamp_min(TINY)
    zero = torch.round(-lo / scale).clamp(0, top).to(torch.int32)
    return torch.fake_quantize_per_channel_affine(rows, scale, zero, 0, 0, top), scale


def fake_quantize_weight(w: torch.Tensor, bits: int | Rule, granularity: str = "per_tensor"
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the snapped weight, its scale: a 0-d tensor per tensor, one per output unit per channel).
    `bits` is a bit width (the max rule, symmetric) or a whole Rule."""
    rule = bits if isinstance(bits, Rule) else Rule(bits, granularity)
    w = w.detach().float()
    rows = _groups(w, rule.granularity)
    if rule.scheme == "asymmetric":
        snapped, scale = _snap_asymmetric(rows, rule)
    else:
        snapped, scale = _snap_symmetric(rows, _clip(rows, rule), rule.bits)
    return snapped.reshape(w.shape), scale.reshape(()) if rule.granularity == "per_tensor" else scale


def reconstruction_error(w: torch.Tensor, snapped: torch.Tensor) -> dict[str, float]:
    """How far the snapped weight is from the float one: ||w - q(w)|| / ||w|| and max |w - q(w)|."""
    w, diff = w.detach().double(), (w.detach().double() - snapped.detach().double())
    norm = float(w.norm())
    return {"rel_l2_error": float(diff.norm()) / norm if norm > 0 else 0.0,
            "max_abs_error": float(diff.abs().max()) if diff.numel() else 0.0}


@torch.no_grad()
def fake_quantize_model(model: nn.Module, bits: int | Rule, granularity: str = "per_tensor"
                        ) -> tuple[nn.Module, dict[str, dict]]:
    """A copy of `model` whose Linear/Conv2d weights are snapped to the b-bit grid, and per layer
    the number of distinct weight values, the scales' range and the reconstruction error (the
    input model is unchanged)."""
    rule = bits if isinstance(bits, Rule) else Rule(bits, granularity)
    model = copy.deepcopy(model)
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, LAYERS):
            snapped, scale = fake_quantize_weight(m.weight, rule)
            error = reconstruction_error(m.weight, snapped)
            m.weight.copy_(snapped.to(m.weight.dtype))
            layers[name] = {"scales": scale.numel(), "scale_min": float(scale.min()), "scale_max": float(scale.max()),
                            "distinct_values": int(torch.unique(m.weight).numel()), **error}
    return model, layers


class BinarizeSTE(torch.autograd.Function):
    """Forward: sign(w) * c per group (c from `rule`, sign(0) = +1). Backward (BinaryConnect's
    straight-through estimator): the incoming gradient passed to w where |w| <= 1, zero elsewhere;
    the scale is treated as a constant."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, rule: Rule) -> torch.Tensor:
        ctx.save_for_backward(w)
        return fake_quantize_weight(w, rule)[0].to(w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype), None


class Binarized(nn.Module):
    """A parametrization (torch.nn.utils.parametrize) that binarizes a layer's weight in its forward."""

    def __init__(self, rule: Rule):
        super().__init__()
        self.rule = rule

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return BinarizeSTE.apply(w, self.rule)


def packed_bytes(model: nn.Module, bits: int, scales: int, layers: tuple = LAYERS) -> int:
    """Bytes of a b-bit encoding of `model`: b bits per weight of `layers`, a float32 per scale,
    every other parameter (biases, normalization, other layers) in float32; no container overhead."""
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, layers))
    other = sum(p.numel() for p in model.parameters()) - weights
    return -(-weights * bits // 8) + 4 * scales + 4 * other
