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
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from nnopt_cli.config.stages import PRUNE_METHODS
from nnopt_cli.post.compaction import PRUNABLE, compact, model_config_of, prunable_layers
from nnopt_cli.post.measure import sparsity_report
from nnopt_cli.post.stage import StageContext, StageResult

OUTPUT_FILE = "model.pruned.pt"

def check(cfg: dict, model_cfg: dict) -> dict:
    """post.prune's settings are all values (config/stages.py); the next stage gets the same model."""
    return model_cfg


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
        raise ValueError(f"unknown pruning method {method!r}; one of {', '.join(PRUNE_METHODS)}")


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


def run(ctx: StageContext, model: nn.Module, model_cfg: dict) -> StageResult:
    s = ctx.cfg["post"]["prune"]
    work = copy.deepcopy(model)
    rounds = []
    by_threshold = s.get("threshold") is not None  # else by fraction (sparsity); check() wants one
    # each round prunes up to the schedule's value: of the fraction, or of the threshold
    goal = s["threshold"] if by_threshold else s["sparsity"]
    for r, target in enumerate(sparsity_schedule(goal, s["rounds"], s["schedule"]), start=1):
        if by_threshold:
            prune_below(work, s["method"], target, norm=s["norm"], include_last=s["prune_output"])
        else:
            prune_to(work, s["method"], target, norm=s["norm"], include_last=s["prune_output"])
        # read before fine-tuning moves the surviving weights: the values the masks were cut from
        used = thresholds(work, s["method"], norm=s["norm"], used=target if by_threshold else None)
        pruned = sparsity_report(work)["sparsity"]  # m.weight = weight_orig * mask, zeros counted
        if s["finetune_epochs"] > 0:
            ctx.fit(work, s["finetune_epochs"], {"stage": "prune", "round": r, "sparsity": pruned},
                    lr_scale=s["lr_scale"])
        goal_key = "threshold" if by_threshold else "target_sparsity"
        rounds.append({"round": r, goal_key: target, "sparsity": pruned, "thresholds": used, **ctx.test(work)})
    make_permanent(work)
    score = "unit Ln norm" if s["method"] == "structured" else "|w|"
    info: dict[str, Any] = {"rounds": rounds, "thresholds": rounds[-1]["thresholds"], "threshold_kind":
                            f"{score} < threshold pruned" if by_threshold else
                            f"{score}: threshold = the smallest kept, the one the fraction implied"}
    out = work
    if s["compact"]:
        small = compact(work, ctx.data.input_shape)
        with torch.no_grad():  # the compacted model must compute what the masked one does
            work.eval()
            a, b = work(ctx.data.test_x), small(ctx.data.test_x)
        info["compaction"] = {
            "max_abs_logit_diff": (a - b).abs().max().item(),
            "same_predictions": (a.argmax(1) == b.argmax(1)).float().mean().item(),
            "masked_params": sum(p.numel() for p in work.parameters()),
            "compacted_params": sum(p.numel() for p in small.parameters()),
        }
        out = small
    info["sparsity_before_compaction"] = sparsity_report(work)["sparsity"]
    zeros_left = sparsity_report(out)["sparsity"]
    compacted = sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in model.parameters())
    info["compacted"], info["masked_only"] = compacted, not compacted and zeros_left > 0
    notes = []
    if compacted:
        units = [[m.weight.shape[0] for m in prunable_layers(x, include_last=False)] for x in (model, out)]
        notes.append(f"compacted: hidden units {units[0]} -> {units[1]}, layers rebuilt without the removed "
                     "ones (really smaller and faster)")
    if zeros_left > 0:
        notes.append(f"{'the remaining' if compacted else 'masked only:'} {zeros_left:.1%} zero weights sit inside "
                     "dense tensors: no file-size or speed gain from them with dense kernels; size_zip_bytes / "
                     "size_sparse_bytes show what an encoding that skips zeros saves")
    info["note"] = "; ".join(notes) or "nothing pruned"
    return StageResult(out, model_config_of(out, model_cfg), info, headline=f"prune: {info['note']}")
