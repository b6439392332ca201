"""Optimizers and LR schedulers: torch's own classes, built from `_target_` configs.

conf/optimizer/*.yaml and conf/scheduler/*.yaml name torch.optim classes with `_partial_: true`;
values known only at run time (the parameters, the optimizer, the number of steps) are passed
here, at the call site. Any other torch.optim class works by overriding `_target_`.
"""

from __future__ import annotations

import inspect
from typing import Any

import hydra.utils
import torch
from hydra.errors import InstantiationException
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from nnopt_cli.build import bind, locate, settings
from nnopt_cli.checks import need_choice, need_int, need_int_list, need_num
from nnopt_cli.errors import ConfigError

# keys of conf/scheduler/*.yaml that describe how the runner drives the scheduler, not its arguments
SCHEDULER_META_KEYS = ("interval", "monitor")


def _instantiate(group: str, cfg: dict[str, Any], *args, **kwargs):
    try:
        return hydra.utils.instantiate(cfg)(*args, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise ConfigError(f"{group}._target_", cfg.get("_target_"), f"could not build it: {cause}".splitlines()[0]) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(group, {k: v for k, v in cfg.items() if not k.startswith("_")}, str(e).splitlines()[0]) from None


def build_optimizer(cfg: dict[str, Any], params) -> Optimizer:
    opt = _instantiate("optimizer", cfg, params)
    if not isinstance(opt, Optimizer):
        raise ConfigError("optimizer._target_", cfg.get("_target_"), "a torch.optim.Optimizer class")
    return opt


def build_scheduler(cfg: dict[str, Any], optimizer: Optimizer, total_steps: int):
    """Return (scheduler or None, interval 'epoch'|'step', monitored metric or None)."""
    cfg = dict(cfg)
    interval = cfg.pop("interval", "epoch")
    monitor = cfg.pop("monitor", None)
    cfg.pop("name", None)
    if "_target_" not in cfg:
        return None, interval, None
    target = hydra.utils.get_method(cfg["_target_"]) if "." in str(cfg["_target_"]) else None
    kwargs = {}
    if interval == "step" and target is not None and "total_steps" in inspect.signature(target).parameters:
        kwargs["total_steps"] = total_steps
    sched = _instantiate("scheduler", cfg, optimizer, **kwargs)
    return sched, interval, monitor


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05,
                  start_factor: float = 0.01, eta_min: float = 0.0) -> LRScheduler:
    """Linear warm-up from start_factor*lr to lr, then cosine annealing to eta_min (per step).

    Built from torch's LinearLR, CosineAnnealingLR and SequentialLR, so its state_dict is torch's.
    """
    warmup = max(1, int(round(total_steps * warmup_fraction)))
    return SequentialLR(
        optimizer,
        [LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup),
         CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup), eta_min=eta_min)],
        milestones=[warmup],
    )


def _parameters(fn) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


def current_lr(optimizer: Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


def check_optimizer(opt: dict) -> None:
    if "_target_" not in opt:
        raise ConfigError("optimizer._target_", None, "a torch.optim class such as torch.optim.Adam")
    need_num("optimizer.lr", opt.get("lr"), gt=0)
    # the class and its settings, before any data is loaded: a typo is one line, not a TypeError later
    cls = locate("optimizer._target_", opt["_target_"], Optimizer)
    bind("optimizer", cls, ([torch.zeros(1, requires_grad=True)],), settings(opt))
    if "weight_decay" in opt:
        need_num("optimizer.weight_decay", opt["weight_decay"], ge=0)
    if "momentum" in opt:
        need_num("optimizer.momentum", opt["momentum"], ge=0, lt=1)


def check_scheduler(s: dict) -> None:
    if "_target_" not in s:
        return
    need_choice("scheduler.interval", s.get("interval", "epoch"), ("epoch", "step"))
    fn = locate("scheduler._target_", s["_target_"])
    kwargs = {k: v for k, v in settings(s).items() if k not in (*SCHEDULER_META_KEYS, "name")}
    if s.get("interval") == "step" and "total_steps" in _parameters(fn):
        kwargs["total_steps"] = 1
    bind("scheduler", fn, (torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),), kwargs)
    if "gamma" in s:
        need_num("scheduler.gamma", s["gamma"], gt=0, le=1)
    if "step_size" in s:
        need_int("scheduler.step_size", s["step_size"], 1)
    if "milestones" in s:
        need_int_list("scheduler.milestones", s["milestones"])
    if "warmup_fraction" in s:
        need_num("scheduler.warmup_fraction", s["warmup_fraction"], ge=0, lt=1)
    if "monitor" in s:
        need_choice("scheduler.monitor", s["monitor"], ("val/loss", "val/acc"))
    if "eta_min" in s:
        need_num("scheduler.eta_min", s["eta_min"], ge=0)
