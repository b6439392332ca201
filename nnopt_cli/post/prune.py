"""Magnitude pruning with torch.nn.utils.prune, and compaction of structurally pruned models.

Pruning removes either a fraction (`sparsity`: the smallest weights/units go, `prune_to`) or
everything below a threshold (`threshold`: |w| < tau, or unit norm < tau, `prune_below`). Either
way every layer's threshold is reported (`thresholds`): the one used, or the one a fraction implied.

While pruning, each pruned tensor is reparametrized by torch (`weight = weight_orig * weight_mask`),
so fine-tuning never revives a pruned weight; `make_permanent` folds the masks into the weights.
A pruned-but-not-compacted model is *masked*: dense tensors full of zeros, same size and speed
as the dense model until a sparse encoding or kernel is used. `compact` rebuilds the layers
without the removed units, so the model really is smaller and faster.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from nnopt_cli.checks import need_choice, need_int, need_num
from nnopt_cli.errors import ConfigError

METHODS = ("layer", "global", "structured")
SCHEDULES = ("cubic", "linear")
PRUNABLE = (nn.Linear, nn.Conv2d)
# modules that act on each unit (neuron/channel) separately, so a removed unit's constant output
# can be followed through them
PER_UNIT = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.MaxPool2d, nn.Flatten, nn.ReLU, nn.LeakyReLU,
            nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh)


def check(s: dict) -> None:
    """Validate the post.prune node (ConfigError on the first problem)."""
    need_choice("post.prune.method", s["method"], METHODS)
    threshold = s.get("threshold")
    if (s["sparsity"] is None) == (threshold is None):
        raise ConfigError("post.prune.threshold", threshold, "exactly one of post.prune.sparsity and "
                          f"post.prune.threshold set, the other null (sparsity is {s['sparsity']})")
    if threshold is None:
        need_num("post.prune.sparsity", s["sparsity"], ge=0, lt=1)
    else:
        need_num("post.prune.threshold", threshold, gt=0)
    need_int("post.prune.rounds", s["rounds"], 1)
    need_choice("post.prune.schedule", s["schedule"], SCHEDULES)
    need_int("post.prune.finetune_epochs", s["finetune_epochs"], 0)
    need_num("post.prune.lr_scale", s["lr_scale"], gt=0)
    need_num("post.prune.norm", s["norm"], gt=0)
    for key in ("prune_output", "compact"):
        if not isinstance(s[key], bool):
            raise ConfigError(f"post.prune.{key}", s[key], "true or false")


class ThresholdUnstructured(prune.BasePruningMethod):
    """Prune every entry with |w| < threshold (torch's pruning reparametrization and masks)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        return default_mask * (t.abs() >= self.threshold).to(default_mask.dtype)


def sparsity_schedule(target: float, rounds: int, kind: str) -> list[float]:
    """The sparsity after each round: cubic rises fast then levels off (Zhu & Gupta 2017)."""
    fractions = [r / rounds for r in range(1, rounds + 1)]
    if kind == "cubic":
        return [target * (1 - (1 - f) ** 3) for f in fractions]
    return [target * f for f in fractions]


def prunable_layers(model: nn.Module, include_last: bool = True) -> list[nn.Module]:
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    return layers if include_last else layers[:-1]


def _pruned(m: nn.Module, name: str = "weight") -> int:
    mask = getattr(m, f"{name}_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def _pruned_units(m: nn.Module) -> int:
    mask = getattr(m, "weight_mask", None)
    return 0 if mask is None else int((~mask.flatten(1).bool().any(1)).sum())


def prune_to(model: nn.Module, method: str, sparsity: float, *, norm: float = 2.0,
             include_last: bool = True) -> None:
    """Prune more weights so the pruned fraction reaches `sparsity` (masks stay attached).

    layer       L1 magnitude, unstructured, the same fraction in every Linear/Conv layer
    global      L1 magnitude, unstructured, one threshold across all those layers
    structured  Ln norm over output units (neurons of Linear, channels of Conv), the fraction of
                units removed in every hidden layer (the output layer keeps all classes); the
                biases of removed units are pruned too, so a removed unit's input is exactly 0
    Already-pruned entries stay pruned: each call prunes only the difference.
    """
    if method == "structured":
        for m in prunable_layers(model, include_last=False):
            units = m.weight.shape[0]
            more = min(round(sparsity * units), units - 1) - _pruned_units(m)  # keep at least one unit
            if more > 0:
                prune.ln_structured(m, "weight", amount=more, n=norm, dim=0)
            _prune_dead_biases(m)
        return
    layers = prunable_layers(model, include_last)
    if method == "layer":
        for m in layers:
            more = round(sparsity * m.weight.numel()) - _pruned(m)
            if more > 0:
                prune.l1_unstructured(m, "weight", amount=more)
    elif method == "global":
        total = sum(m.weight.numel() for m in layers)
        more = round(sparsity * total) - sum(_pruned(m) for m in layers)
        if more > 0:
            prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured,
                                      amount=more)
    else:
        raise ValueError(f"unknown pruning method {method!r}; one of {', '.join(METHODS)}")


def _prune_dead_biases(m: nn.Module) -> None:
    """Prune the biases of removed units too, so a removed unit's input is exactly 0."""
    if m.bias is not None and prune.is_pruned(m):
        keep = m.weight_mask.flatten(1).any(1).to(m.bias.dtype)
        prune.custom_from_mask(m, "bias", mask=keep)


def _orig(m: nn.Module) -> torch.Tensor:
    """The weight before masking (`weight_orig` once pruned): what every ranking is computed on."""
    return getattr(m, "weight_orig", m.weight).detach()


def _unit_norms(m: nn.Module, norm: float) -> torch.Tensor:
    return torch.linalg.vector_norm(_orig(m).flatten(1), ord=norm, dim=1)


def layer_thresholds(model: nn.Module, method: str, tau: float) -> dict[nn.Module, float]:
    """The threshold each layer prunes below for `post.prune.threshold=tau`.

    global      tau itself in every layer (|w| < tau)
    layer       tau x the std of the layer's weights (Han et al. 2015), so layers of different
                scale lose a comparable share
    structured  tau itself, compared with each unit's Ln norm
    """
    layers = prunable_layers(model, include_last=True)
    if method == "layer":
        return {m: tau * float(_orig(m).std()) for m in layers}
    return {m: tau for m in layers}


def prune_below(model: nn.Module, method: str, tau: float, *, norm: float = 2.0,
                include_last: bool = True) -> None:
    """Prune every weight (structured: every hidden unit) below the threshold `layer_thresholds`
    gives; already-pruned entries stay pruned, and a layer keeps at least its largest unit."""
    limits = layer_thresholds(model, method, tau)
    if method == "structured":
        for m in prunable_layers(model, include_last=False):
            norms = _unit_norms(m, norm)
            keep = norms >= limits[m]
            keep[norms.argmax()] = True  # keep at least one unit
            if not bool(keep.all()):
                mask = keep.view(-1, *([1] * (m.weight.ndim - 1))).expand_as(m.weight).to(m.weight.dtype)
                prune.custom_from_mask(m, "weight", mask=mask)
            _prune_dead_biases(m)
        return
    for m in prunable_layers(model, include_last):
        ThresholdUnstructured.apply(m, "weight", threshold=limits[m])


def thresholds(model: nn.Module, method: str, *, norm: float = 2.0, used: float | None = None) -> dict[str, dict]:
    """Per pruned layer: the largest pruned and the smallest kept |w| (structured: unit Ln norm),
    read from the masks, and the threshold: the one `prune_below` used, or else the one the
    fraction implied (the smallest kept value: everything below it was pruned)."""
    limits = layer_thresholds(model, method, used) if used is not None else {}
    out = {}
    for name, m in model.named_modules():
        mask = getattr(m, "weight_mask", None)
        if not isinstance(m, PRUNABLE) or mask is None:
            continue
        if method == "structured":
            scores, pruned = _unit_norms(m, norm), ~mask.flatten(1).bool().any(1)
        else:
            scores, pruned = _orig(m).abs().flatten(), mask.flatten() == 0
        big = float(scores[pruned].max()) if bool(pruned.any()) else None
        small = float(scores[~pruned].min()) if bool((~pruned).any()) else None
        out[name] = {"threshold": limits.get(m, small), "largest_pruned": big, "smallest_kept": small,
                     "pruned": int(pruned.sum()), "of": pruned.numel()}
    return out


def make_permanent(model: nn.Module) -> None:
    """Fold the masks into the weights and drop the reparametrization (plain tensors again)."""
    for m in model.modules():
        for name in ("weight", "bias"):
            if prune.is_pruned(m) and hasattr(m, f"{name}_mask"):
                prune.remove(m, name)


def _layer_output_shapes(model: nn.Sequential, input_shape: Sequence[int]) -> dict[int, torch.Size]:
    shapes, hooks = {}, []
    for i, m in enumerate(model):
        hooks.append(m.register_forward_hook(lambda _m, _i, out, i=i: shapes.__setitem__(i, out.shape[1:])))
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _slice_out(m: nn.Module, keep: torch.Tensor) -> nn.Module:
    """A copy of a Linear/Conv2d/BatchNorm keeping only the output units in `keep` (bool)."""
    idx = keep.nonzero().flatten()
    if isinstance(m, nn.Linear):
        new = nn.Linear(m.in_features, len(idx), bias=m.bias is not None)
    elif isinstance(m, nn.Conv2d):
        new = nn.Conv2d(m.in_channels, len(idx), m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                        bias=m.bias is not None, padding_mode=m.padding_mode)
    else:  # BatchNorm
        new = type(m)(len(idx), m.eps, m.momentum, m.affine, m.track_running_stats)
    new = new.to(device=idx.device, dtype=next(m.parameters()).dtype)
    state = {k: v[idx] if v.ndim >= 1 else v for k, v in m.state_dict().items()}
    new.load_state_dict(state)
    return new


def _slice_in(m: nn.Module, keep: torch.Tensor) -> nn.Module:
    """A copy of a Linear/Conv2d keeping only the input features/channels in `keep` (bool)."""
    idx = keep.nonzero().flatten()
    if isinstance(m, nn.Linear):
        new = nn.Linear(len(idx), m.out_features, bias=True)
    else:
        if m.groups != 1:
            raise ValueError("cannot compact a grouped convolution")
        new = nn.Conv2d(len(idx), m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                        bias=True, padding_mode=m.padding_mode)
    new = new.to(device=idx.device, dtype=m.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(m.weight[:, idx])
        new.bias.copy_(m.bias if m.bias is not None else torch.zeros_like(new.bias))
    return new


@torch.no_grad()
def compact(model: nn.Sequential, input_shape: Sequence[int]) -> nn.Sequential:
    """Rebuild `model` without the hidden units whose incoming weights are all zero.

    Such a unit outputs a constant (its bias, then the per-unit modules after it), so its
    effect on the next layer is a constant too: it is added to that layer's bias, and the
    compacted model computes the same function as the masked one (up to float rounding).
    Returns a new model (eval mode); the input model is not changed.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError("compaction needs an nn.Sequential model")
    model = copy.deepcopy(model).eval()
    shapes = _layer_output_shapes(model, input_shape)
    mods = list(model)
    weight_idx = [i for i, m in enumerate(mods) if isinstance(m, PRUNABLE)]
    for a, b in zip(weight_idx, weight_idx[1:], strict=False):
        layer, nxt, tail = mods[a], mods[b], mods[a + 1:b]
        bad = [type(t).__name__ for t in tail if not isinstance(t, PER_UNIT)]
        if bad:
            raise ValueError(f"cannot compact across {', '.join(bad)}")
        keep = layer.weight.flatten(1).ne(0).any(1)
        if bool(keep.all()):
            continue
        if not bool(keep.any()):
            keep[0] = True  # a layer keeps one unit so the model stays well formed
        # what every unit feeds the next layer when its weights are zero: f(bias), through the tail
        out_shape = shapes[a]
        bias = layer.bias if layer.bias is not None else torch.zeros(out_shape[0], device=keep.device)
        z = bias.view(1, -1, *([1] * (len(out_shape) - 1))).expand(1, *out_shape).clone()
        for t in tail:
            z = t(z)
        spatial = z.numel() // out_shape[0] if isinstance(nxt, nn.Linear) else 1
        keep_in = keep.repeat_interleave(spatial) if z.ndim == 2 and z.shape[1] != keep.numel() else keep
        removed_in = ~keep_in
        z_removed = z * removed_in.view(1, -1, *([1] * (z.ndim - 2))).to(z.dtype)
        delta = nxt(z_removed) - nxt(torch.zeros_like(z_removed))
        if delta.ndim > 2:  # conv: must be the same at every position (true without padding)
            flat = delta.flatten(2)
            if not torch.allclose(flat, flat[..., :1].expand_as(flat), atol=1e-5):
                raise ValueError("cannot compact: removed channels feed a padded convolution")
            delta = flat[..., 0]
        new_nxt = _slice_in(nxt, keep_in)
        new_nxt.bias += delta[0]
        mods[b] = new_nxt
        mods[a] = _slice_out(layer, keep)
        for j in range(a + 1, b):
            if isinstance(mods[j], (nn.BatchNorm1d, nn.BatchNorm2d)):
                mods[j] = _slice_out(mods[j], keep)
    return nn.Sequential(*mods).eval()


def model_config_of(model: nn.Sequential, model_cfg: dict) -> dict:
    """The conf/model entry that rebuilds `model`'s architecture (widths read from its layers)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    if model_cfg["name"] == "mlp":
        return {**model_cfg, "hidden": [m.out_features for m in linears[:-1]]}
    return {**model_cfg, "channels": [m.out_channels for m in convs], "fc": [m.out_features for m in linears[:-1]]}
