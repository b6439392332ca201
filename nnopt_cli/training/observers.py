"""Observers: the one extension point for code that watches training without changing it.

Diagnostics, live loggers (TensorBoard) and trial pruning (nnopt tune) are observers. The
training loop calls their hooks at fixed points:

    on_run_start(run)            once, after the model/optimizer are built and a resume restored
    before_step(step)            after backward + clipping, before optimizer.step() (gradients are there)
    after_step(step)             after optimizer.step() and the step's scheduler update
    on_epoch_end(epoch)          after validation, with the epoch's metrics row (already written)
    on_run_end(summary)          once, after the test evaluation, with the summary about to be written

Every hook is optional (the base class does nothing). With no observer configured the loop makes
no call at all, so an observer costs nothing unless it is asked for (`make bench`).

An observer that keeps state across epochs implements state_dict()/load_state_dict() with plain
values and tensors: it goes into checkpoint.pt and comes back on resume. One that wants the run
to end early (a pruned trial) raises StopRun from on_epoch_end; the run then ends with that
status, writes its summary and is not resumed.

Observers come from the config: the `diagnostics` and `logger` groups (a node with a
`_target_`, or one per option chosen: `logger=[tensorboard,csv]` gives logger.tensorboard and
logger.csv), and `observers.<name>` entries for user classes:
    nnopt train +observers.mine._target_=my_module.MyObserver +observers.mine.every=10
The class is built with the node's other keys and must subclass Observer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnopt_cli.config.build import bind, build, locate, settings
from nnopt_cli.errors import ConfigError

# top-level config nodes that hold one observer each (a config group), besides `observers`
OBSERVER_GROUPS = ("diagnostics", "logger")


class StopRun(Exception):
    """Raised by an observer's on_epoch_end to end the run now with `status` (e.g. 'pruned')."""

    def __init__(self, status: str, message: str):
        self.status = status
        super().__init__(message)


@dataclass
class RunInfo:
    """What an observer may look at once per run."""

    cfg: dict
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_x: torch.Tensor
    train_y: torch.Tensor
    write: bool = True  # False on DDP ranks other than 0: observe, but write no files
    resumed_epoch: int = 0  # epochs already done when the run (re)started


@dataclass
class StepInfo:
    """One optimizer step. `loss` is the step's loss as a tensor: calling .item() syncs the device."""

    epoch: int
    step: int  # optimizer steps since the start of the run, 1-based
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: torch.Tensor
    batch_size: int


@dataclass
class EpochInfo:
    epoch: int
    row: dict[str, Any]  # the metrics row of the epoch, as written to metrics.jsonl
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int  # optimizer steps since the start of the run
    extra: dict[str, Any] = field(default_factory=dict)


class Observer:
    """Base class: override the hooks you need."""

    def on_run_start(self, run: RunInfo) -> None:
        pass

    def before_step(self, step: StepInfo) -> None:
        pass

    def after_step(self, step: StepInfo) -> None:
        pass

    def on_epoch_end(self, epoch: EpochInfo) -> None:
        pass

    def on_run_end(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        """Release files and threads; called once, however the run ended."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Observers:
    """The observers of a run, called in config order. Empty -> `bool(observers)` is False and
    the training loop skips the per-step calls entirely."""

    def __init__(self, items: dict[str, Observer] | None = None):
        self.items: dict[str, Observer] = dict(items or {})

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self):
        return iter(self.items.values())

    def on_run_start(self, run: RunInfo) -> None:
        for o in self:
            o.on_run_start(run)

    def before_step(self, step: StepInfo) -> None:
        for o in self:
            o.before_step(step)

    def after_step(self, step: StepInfo) -> None:
        for o in self:
            o.after_step(step)

    def on_epoch_end(self, epoch: EpochInfo) -> None:
        for o in self:
            o.on_epoch_end(epoch)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        for o in self:
            o.on_run_end(summary)

    def close(self) -> None:
        for o in self:
            try:
                o.close()
            except Exception:  # closing must not hide the run's own outcome
                pass

    def state_dict(self) -> dict[str, Any]:
        return {name: o.state_dict() for name, o in self.items.items()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        for name, o in self.items.items():
            if state and name in state:
                o.load_state_dict(state[name])


def observer_nodes(cfg: dict) -> dict[str, dict]:
    """name -> config node of every observer the run config asks for, in a fixed order."""
    nodes: dict[str, dict] = {}
    for group in OBSERVER_GROUPS:
        node = cfg.get(group)
        if node is not None and node.get("_target_") is not None:
            nodes[group] = node
        elif isinstance(node, dict):  # several options of the group at once: logger=[tensorboard,csv]
            nodes.update({f"{group}.{name}": sub for name, sub in node.items()
                          if isinstance(sub, dict) and sub.get("_target_") is not None})
    for name, node in (cfg.get("observers") or {}).items():
        if node is not None:
            nodes[f"observers.{name}"] = node
    return nodes


def check_observers(cfg: dict) -> None:
    """Each observer's class exists, is an Observer and takes its settings (before any data is loaded)."""
    for name, node in observer_nodes(cfg).items():
        if not isinstance(node, dict) or "_target_" not in node:
            raise ConfigError(name, node, "a node with _target_: a subclass of nnopt_cli.training.observers.Observer")
        cls = locate(f"{name}._target_", node["_target_"], Observer)
        bind(name, cls, (), settings(node))
        if name.split(".")[0] in OBSERVER_GROUPS and cls.__module__.startswith("nnopt_cli."):
            cls(**settings(node))  # nnopt's loggers and diagnostics check their values when built (no files yet)


def build_observers(cfg: dict) -> Observers:
    return Observers({name: build(name, node, Observer) for name, node in observer_nodes(cfg).items()})
