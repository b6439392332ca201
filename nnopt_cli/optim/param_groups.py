"""Parameter-group rules (`optimizer.param_groups`): which tensors get which settings or optimizer.

    param_groups:
      matrices: {_target_: torch.optim.Muon, lr: 0.02, ...}   # 2-D hidden weights -> their own optimizer
      no_decay: [bias, norm]        # weight_decay 0 for biases and normalization weights
      lr_scale: {no_decay: 1.0}     # per-group LR multiplier: matrices | no_decay | rest

Every parameter lands in exactly one group, decided in this order:
  matrices  2-D weights of hidden layers: every nn.Linear weight except the model's last nn.Linear
            (the classifier head), and never an nn.Embedding. Conv kernels (4-D) are NOT matrices:
            torch.optim.Muon takes 2-D tensors only, so they go with the rest (AdamW in `muon`).
  no_decay  biases (parameter names ending in "bias") and weights of normalization layers
            (BatchNorm*, LayerNorm, GroupNorm, RMSNorm, InstanceNorm*), when listed in no_decay.
  rest      everything else.
With a `matrices` node the matrices get the optimizer it names and the rest get `optimizer._target_`;
both are stepped as one torch Optimizer (Routed), so LR schedulers, checkpoints and wrappers see one
object whose param_groups are the groups of both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from nnopt_cli.optim.checks import GROUPS

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def split(model: nn.Module, matrices: bool, no_decay: list[str]) -> dict[str, list[nn.Parameter]]:
    """The model's trainable parameters by group name (see the module docstring), in model order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head = linears[-1] if linears else None
    kind: dict[int, str] = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in kind:
                continue  # shared weights: the first module that owns them decides
            if matrices and isinstance(module, nn.Linear) and module is not head and p.ndim == 2:
                kind[id(p)] = "matrices"
            elif "norm" in no_decay and isinstance(module, NORM_TYPES):
                kind[id(p)] = "no_decay"
            elif "bias" in no_decay and pname.endswith("bias"):
                kind[id(p)] = "no_decay"
            else:
                kind[id(p)] = "rest"
    out: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for p in model.parameters():
        if p.requires_grad:
            out[kind[id(p)]].append(p)
    return out


def build(model: nn.Module, node: dict, lr: float, make: Callable[[str, dict, list], Optimizer],
          main: dict) -> Optimizer:
    """The optimizer for `model` under the rules in `node`: make(key, spec, groups) builds one
    optimizer from an optimizer node (`main` is optimizer itself, minus the meta keys)."""
    mat_node = node.get("matrices")
    groups = split(model, matrices=mat_node is not None, no_decay=list(node.get("no_decay") or []))
    scale = node.get("lr_scale") or {}

    def group(name: str, base_lr: float, **extra) -> dict:
        return {"params": groups[name], "name": name, "lr": base_lr * scale.get(name, 1.0), **extra}

    rest = [group("rest", lr)]
    if groups["no_decay"]:
        rest.append(group("no_decay", lr, weight_decay=0.0))
    rest = [g for g in rest if g["params"]]
    if mat_node is None:
        return make("optimizer", main, rest)
    mat_lr = mat_node.get("lr", lr)
    parts = {"matrices": make("optimizer.param_groups.matrices", mat_node, [group("matrices", mat_lr)])}
    if rest:
        parts["rest"] = make("optimizer", main, rest)
    return Routed(parts)


class Routed(Optimizer):
    """Disjoint parameter sets, each with its own torch optimizer, stepped and saved as one.

    param_groups is the list of every part's group dicts (the same dict objects), so an LR
    scheduler or a batch-size LR factor that writes group["lr"] reaches the part that owns it.
    """

    def __init__(self, parts: dict[str, Optimizer]):
        self.parts = parts
        super().__init__([p for o in parts.values() for g in o.param_groups for p in g["params"]], {})
        self.param_groups = [g for o in parts.values() for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.parts.values():
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts.values():
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: o.state_dict() for name, o in self.parts.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != set(self.parts):
            raise ValueError(f"optimizer parts {sorted(state_dict)} do not match {sorted(self.parts)}")
        for name, o in self.parts.items():
            o.load_state_dict(state_dict[name])
        self.param_groups = [g for o in self.parts.values() for g in o.param_groups]

    def train(self) -> None:  # schedule-free parts switch modes; the others have nothing to switch
        for o in self.parts.values():
            getattr(o, "train", lambda: None)()

    def eval(self) -> None:
        for o in self.parts.values():
            getattr(o, "eval", lambda: None)()
