"""LR schedulers (conf/scheduler/*.yaml): torch.optim.lr_scheduler classes built from `_target_`.

Values known only at run time are passed here: the optimizer, and the run's number of optimizer
steps to a scheduler whose signature has `total_steps`, or whose config leaves `total_iters: null`
(LinearLR over the whole run). The shapes torch lacks (warmup_cosine, wsd, inverse_sqrt) are
torch's own SequentialLR / LambdaLR, so their state_dict is torch's and resumes exactly.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, LRScheduler, SequentialLR

from nnopt_cli.config.build import bind, locate, plain_settings, settings
from nnopt_cli.errors import ConfigError
from nnopt_cli.optim.checks import WSD_SHAPES, check_scheduler_values, refuse_hydra_call_keys

# keys of conf/scheduler/*.yaml that describe how the runner drives the scheduler, not its arguments
SCHEDULER_META_KEYS = ("interval", "monitor")


def build_scheduler(cfg: dict[str, Any], optimizer: Optimizer, total_steps: int):
    """Return (scheduler or None, interval 'epoch'|'step', monitored metric or None).

    The class is located and called with the optimizer and the node's settings (locate-and-bind,
    as the optimizer is built): nothing is resolved or instantiated from the node, which may come
    from a run folder (resume=), and each setting must be a named argument holding plain data."""
    cfg = dict(cfg)
    interval = cfg.pop("interval", "epoch")
    monitor = cfg.pop("monitor", None)
    cfg.pop("name", None)
    if "_target_" not in cfg:
        return None, interval, None
    target = locate("scheduler._target_", cfg["_target_"])
    refuse_hydra_call_keys(cfg)
    kwargs = settings(cfg)
    if interval == "step":
        params = _parameters(target)
        if "total_steps" in params:
            kwargs["total_steps"] = total_steps
        if "total_iters" in params and kwargs.get("total_iters", 0) is None:  # null: the whole run
            kwargs["total_iters"] = total_steps
    plain_settings("scheduler", target, kwargs)
    bind("scheduler", target, (optimizer,), kwargs)
    try:
        sched = target(optimizer, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError("scheduler", settings(cfg), (str(e).splitlines() or [type(e).__name__])[0]) from None
    except Exception as e:  # whatever the class raises while it is built
        cause = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError("scheduler._target_", cfg["_target_"], f"a class that can be built ({cause})") from None
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


def wsd_factor(step: int, total_steps: int, warmup_fraction: float, decay_fraction: float, shape: str,
               start_factor: float, min_factor: float) -> float:
    """The LR multiplier of warmup-stable-decay at optimizer step `step` (0-based)."""
    warmup = int(round(total_steps * warmup_fraction))
    decay = int(round(total_steps * decay_fraction))
    stable_end = total_steps - decay
    if step < warmup:
        return start_factor + (1.0 - start_factor) * step / warmup
    if step < stable_end:
        return 1.0
    t = min(1.0, (step - stable_end) / max(1, decay))
    if shape == "linear":
        left = 1.0 - t
    elif shape == "cosine":
        left = 0.5 * (1.0 + math.cos(math.pi * t))
    else:  # "1 - sqrt", the cooldown Hägele et al. 2024 found best
        left = 1.0 - math.sqrt(t)
    return min_factor + (1.0 - min_factor) * left


def wsd(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0, decay_fraction: float = 0.2,
        shape: str = "linear", start_factor: float = 0.0, min_factor: float = 0.0) -> LRScheduler:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024): a linear warm-up over
    warmup_fraction of the steps, the peak LR, then a decay to min_factor*lr over the last
    decay_fraction of the steps in the given shape (linear | cosine | sqrt). torch's LambdaLR."""
    if shape not in WSD_SHAPES:
        raise ValueError(f"shape must be one of {', '.join(WSD_SHAPES)}, got {shape!r}")
    if warmup_fraction + decay_fraction > 1:
        raise ValueError("warmup_fraction + decay_fraction must be <= 1")

    def factor(step: int) -> float:
        return wsd_factor(step, total_steps, warmup_fraction, decay_fraction, shape, start_factor, min_factor)

    return LambdaLR(optimizer, factor)


def inverse_sqrt(optimizer: Optimizer, warmup_steps: int = 100) -> LRScheduler:
    """Linear warm-up for warmup_steps, then lr * sqrt(warmup_steps / step) (Vaswani et al. 2017,
    the Transformer's "Noam" schedule without the model-width factor). torch's LambdaLR."""
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")

    def factor(step: int) -> float:
        s = step + 1  # LambdaLR counts from 0; the first update runs at (step + 1) / warmup
        return s / warmup_steps if s < warmup_steps else math.sqrt(warmup_steps / s)

    return LambdaLR(optimizer, factor)



def _parameters(fn) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


def check_scheduler(s: dict) -> None:
    """The settings' ranges (checks.py, torch-free), then the class and its settings, bound before
    any data are loaded."""
    check_scheduler_values(s)
    if "_target_" not in s:
        return
    fn = locate("scheduler._target_", s["_target_"])
    kwargs = {k: v for k, v in settings(s).items() if k not in (*SCHEDULER_META_KEYS, "name")}
    if s.get("interval") == "step" and "total_steps" in _parameters(fn):
        kwargs["total_steps"] = 1
    plain_settings("scheduler", fn, kwargs)
    bind("scheduler", fn, (torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),), kwargs)
