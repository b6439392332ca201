"""Optimizers (conf/optimizer/*.yaml): a class named by `_target_`, its keyword arguments, and the
protocol the training step follows for it.

An optimizer node holds the class's arguments plus these protocol keys (absent = the default):
  step: plain            plain: backward, then step()
                         closure: step(closure), the optimizer evaluates every loss and gradient
                           it needs through the closure, the first one included (L-BFGS)
                         backward_closure: backward, then step(closure) for the extra gradients
                           (SAM: the closure re-evaluates at the perturbed weights)
                         create_graph: backward(create_graph=True), then step() (Hessian methods)
  train_eval: false      true: optimizer.eval() before every evaluation and checkpoint,
                         optimizer.train() after (schedule-free methods)
  bn_batches: 0          with train_eval, BatchNorm running statistics are recomputed from this many
                         training batches at the evaluation weights (schedule-free's recipe)
  param_groups: null     rules routing 2-D hidden weights / biases and norms (param_groups.py)
  wrapper: null          an optimizer wrapped around this one, e.g. Lookahead (conf/optimizer/wrapper)
A `base_optimizer: {_target_: ...}` node (SAM) names the inner class; the remaining keys are its
arguments.

Arguments are bound against the class signature before any data are loaded. A key the class does
not take stops the run with one line naming the keys to remove: after `optimizer._target_=X` the
preset's own keys (betas, momentum, ...) may not fit X, and nnopt will not guess which ones to drop.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hydra.utils
import torch
from torch import nn
from torch.optim import Optimizer

from nnopt_cli.errors import ConfigError
from nnopt_cli.optim import param_groups
from nnopt_cli.optim.checks import check_optimizer_values
from nnopt_cli.optim.staleness import NO_DELAY, StaleGradients

META_KEYS = ("step", "train_eval", "bn_batches", "param_groups", "wrapper")


@dataclass(frozen=True)
class Protocol:
    """How the training step drives this optimizer (see the module docstring)."""

    step: str = "plain"
    train_eval: bool = False
    bn_batches: int = 0

    @classmethod
    def from_config(cls, node: dict) -> Protocol:
        return cls(node.get("step", "plain"), node.get("train_eval", False), node.get("bn_batches", 0))

    @property
    def passes_closure(self) -> bool:
        return self.step in ("closure", "backward_closure")


# ---------------------------------------------------------------------------- checks


def resolve(key: str, target: Any) -> type:
    """The class a `_target_` names, or one line saying it is not an optimizer class."""
    try:
        cls = hydra.utils.get_class(str(target))
    except Exception:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise ConfigError(key, target, "a torch.optim.Optimizer class such as torch.optim.AdamW "
                                       "(torch.optim, pytorch_optimizer, schedulefree)")
    return cls


def _named(cls: type, skip: tuple[str, ...]) -> list[str]:
    ps = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in ps if p.name not in ("self", *skip)
            and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]


def check_kwargs(key: str, cls: type, kwargs: dict, first: str = "params", name: str | None = None) -> None:
    """Every key must be a named argument of cls (pytorch_optimizer classes swallow unknown
    **kwargs silently, so a named argument is the only proof a key does something)."""
    takes = _named(cls, (first,))
    base = kwargs.get("base_optimizer")
    if isinstance(base, type):  # SAM passes its other keyword arguments on to the base class
        takes += _named(base, ("params",))
    extra = [k for k in kwargs if k not in takes]
    if extra:
        fix = " ".join(f"~{key}.{k}" for k in extra)
        raise ConfigError(key, name or f"{cls.__module__}.{cls.__name__}",
                          f"takes no {', '.join(extra)}: remove with {fix} (it takes {', '.join(takes)})")


def class_kwargs(key: str, node: dict) -> tuple[type, dict]:
    """The class and checked keyword arguments of an optimizer node (protocol keys left out)."""
    if "_target_" not in node:
        raise ConfigError(f"{key}._target_", None, "a torch.optim class such as torch.optim.AdamW")
    cls = resolve(f"{key}._target_", node["_target_"])
    kwargs = {k: v for k, v in node.items() if not k.startswith("_") and k not in META_KEYS}
    if "base_optimizer" in kwargs:  # SAM's inner class, a {_target_: ...} node (run-folder allow-list)
        base = kwargs["base_optimizer"]
        if not (isinstance(base, dict) and set(base) == {"_target_"}):
            raise ConfigError(f"{key}.base_optimizer", base, "a node {_target_: a torch.optim class}")
        kwargs["base_optimizer"] = resolve(f"{key}.base_optimizer._target_", base["_target_"])
    check_kwargs(key, cls, kwargs, name=str(node["_target_"]))
    return cls, kwargs


def check_optimizer(node: dict, precision: str = "fp32", distributed: bool = False) -> Protocol:
    """Everything about `optimizer` that needs no data: its values (checks.py, torch-free), then the
    classes and their arguments, bound and tried on a toy model."""
    check_optimizer_values(node, precision, distributed)
    class_kwargs("optimizer", node)
    proto = Protocol.from_config(node)
    pg = node.get("param_groups")
    if pg and pg.get("matrices") is not None:
        class_kwargs("optimizer.param_groups.matrices", pg["matrices"])
    w = node.get("wrapper")
    if w is not None:
        cls = resolve("optimizer.wrapper._target_", w["_target_"])
        check_kwargs("optimizer.wrapper", cls, {k: v for k, v in w.items() if not k.startswith("_")},
                     first="optimizer", name=str(w["_target_"]))
    trial_step(node, proto)
    return proto


def trial_step(node: dict, proto: Protocol) -> None:
    """Build the optimizer on a 3-layer toy model and take two steps by its protocol: a value the
    class accepts but cannot use (lbfgs history_size=0, Muon ns_steps=500, a float max_iter) fails
    here, in one line, before any data is loaded. Draws no number from the run's RNG streams."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 2))
        x = torch.randn(8, 3)
        try:
            opt = build_optimizer(node, model)

            def closure(create_graph: bool = False) -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                loss = model(x).pow(2).mean()
                loss.backward(create_graph=create_graph)
                return loss

            if proto.train_eval:
                set_train(opt)
            for _ in range(2):
                optimizer_step(opt, proto.step, closure)
            if proto.train_eval:
                set_eval(opt)
        except ConfigError:
            raise
        except Exception as e:  # whatever the class raises on the values given
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError("optimizer", {k: v for k, v in node.items() if not str(k).startswith("_")},
                              f"{node.get('_target_')} cannot take a step with these settings "
                              f"({type(e).__name__}: {first})") from None


# ---------------------------------------------------------------------------- building


def _make(key: str, node: dict, params) -> Optimizer:
    cls, kwargs = class_kwargs(key, node)
    try:
        return cls(params, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(key, {k: v for k, v in node.items() if not k.startswith("_")}, first) from None


def build_optimizer(cfg: dict[str, Any], model: nn.Module | Any) -> Optimizer:
    """The optimizer an `optimizer` node describes, over `model`'s parameters (or an iterable of
    parameters when the node has no param_groups), wrapped when it names a wrapper."""
    pg = cfg.get("param_groups")
    if pg:
        if not isinstance(model, nn.Module):
            raise ConfigError("optimizer.param_groups", pg, "needs the model, not a parameter list")
        opt = param_groups.build(model, pg, cfg["lr"], _make, cfg)
    else:
        params = model.parameters() if isinstance(model, nn.Module) else model
        opt = _make("optimizer", cfg, params)
    w = cfg.get("wrapper")
    if w is not None:
        cls = resolve("optimizer.wrapper._target_", w["_target_"])
        opt = cls(opt, **{k: v for k, v in w.items() if not k.startswith("_")})
    return opt


# ---------------------------------------------------------------------------- the protocol


@contextlib.contextmanager
def create_graph_backward():
    """backward(create_graph=True) warns of a grad <-> graph reference cycle: it is what Hessian
    methods need, and zero_grad(set_to_none=True) at the next step breaks it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
        yield


def optimizer_step(optimizer: Optimizer, kind: str, closure: Callable[..., torch.Tensor],
                   scaler=None, delay: StaleGradients = NO_DELAY) -> None:
    """One optimizer step the way `kind` says: the one place the protocol is dispatched (the trainer,
    lr-find and the config check all step through here). closure(create_graph=False) zeroes the
    gradients, runs forward + loss + backward (+ unscaling and clipping) and returns the loss.
    scaler: something with step(optimizer) that takes optimizer.step()'s place where the optimizer
    gets no closure (fp16's GradScaler, which skips a step whose gradients overflowed).
    delay: async_sgd=stale's queue (staleness.py), which swaps in the gradients of k steps ago and
    says whether there are any yet; plain steps only (validation refuses the other kinds)."""
    if kind == "closure":
        optimizer.step(closure)  # the optimizer calls it for every gradient, the first one too
        return
    if kind == "create_graph":
        with create_graph_backward():
            closure(create_graph=True)
    else:
        closure()
    if not delay.ready(optimizer):
        return  # a stale-gradient queue still filling: nothing to apply yet
    if kind == "backward_closure":
        optimizer.step(closure)  # the closure gives the extra gradients (SAM's perturbed weights)
    elif scaler is not None:
        scaler.step(optimizer)
    else:
        optimizer.step()


def _innermost_with(optimizer: Optimizer, name: str):
    """The optimizer (this one or one it wraps) that has a method `name`, or None."""
    seen = optimizer
    while seen is not None:
        if callable(getattr(seen, name, None)):
            return seen
        seen = getattr(seen, "optimizer", None) or getattr(seen, "base_optimizer", None)
    return None


def set_eval(optimizer: Optimizer) -> None:
    """Schedule-free: put the evaluation weights (the average x) into the model."""
    o = _innermost_with(optimizer, "eval")
    if o is not None:
        o.eval()


def set_train(optimizer: Optimizer) -> None:
    """Schedule-free: put the training weights (the interpolation y) back into the model."""
    o = _innermost_with(optimizer, "train")
    if o is not None:
        o.train()


def current_lr(optimizer: Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)
