"""Compaction of a structurally pruned model: rebuild its layers without the removed units.

A unit (neuron / channel) whose incoming weights are all zero outputs a constant (its activation
of its bias); the next layer's bias absorbs that constant, so the rebuilt model computes the same
function with fewer parameters: really smaller and faster, unlike a masked model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

PRUNABLE = (nn.Linear, nn.Conv2d)
# modules that act on each unit (neuron/channel) separately, so a removed unit's constant output
# can be followed through them
PER_UNIT = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.MaxPool2d, nn.Flatten, nn.ReLU, nn.LeakyReLU,
            nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh)


def prunable_layers(model: nn.Module, include_last: bool = True) -> list[nn.Module]:
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
    return layers if include_last else layers[:-1]


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
