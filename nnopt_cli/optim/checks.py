"""The checks of the optim groups that read only the config's numbers and strings: `optimizer`
(ranges, step protocol, parameter-group rules), `scheduler` (ranges of its settings) and
`averaging`. Free of torch, so `nnopt train` answers these errors before importing it; what needs
the classes (binding the arguments, a trial step) stays in optimizers.py and schedulers.py.
"""

from __future__ import annotations

from typing import Any

from nnopt_cli.config.checks import need_bool, need_choice, need_int, need_int_list, need_num
from nnopt_cli.errors import ConfigError

STEP_KINDS = ("plain", "closure", "backward_closure", "create_graph")
# counts a step runs by that torch accepts at 0 or below and then does nothing with: LBFGS with
# max_iter=0 "completes" a run at its initial weights; a class without such a key is not affected
POSITIVE_COUNTS = ("max_iter", "max_eval", "history_size", "ns_steps")
GROUPS = ("matrices", "no_decay", "rest")
NO_DECAY_KINDS = ("bias", "norm")
WSD_SHAPES = ("linear", "cosine", "sqrt")
# Hydra's keys nnopt's schedulers do not use: the settings are named, the optimizer comes first
HYDRA_CALL_KEYS = ("_args_", "_recursive_", "_convert_")
AVERAGING_KINDS = ("none", "ema", "swa")


def check_optimizer_values(node: dict, precision: str = "fp32", distributed: bool = False) -> None:
    """The `optimizer` node's numbers and protocol keys, and the protocol against precision and torchrun."""
    if not isinstance(node, dict):
        raise ConfigError("optimizer", node, "a config group node such as optimizer=adam")
    need_num("optimizer.lr", node.get("lr"), gt=0)
    if "weight_decay" in node:
        need_num("optimizer.weight_decay", node["weight_decay"], ge=0)
    if "momentum" in node:
        need_num("optimizer.momentum", node["momentum"], ge=0, lt=1)
    for key in POSITIVE_COUNTS:
        if node.get(key) is not None:
            need_int(f"optimizer.{key}", node[key], 1)
    step = node.get("step", "plain")
    if step not in STEP_KINDS:
        raise ConfigError("optimizer.step", step, "one of " + ", ".join(STEP_KINDS))
    need_bool("optimizer.train_eval", node.get("train_eval", False))
    need_int("optimizer.bn_batches", node.get("bn_batches", 0), 0)
    check_param_groups(node.get("param_groups"))
    w = node.get("wrapper")
    if w is not None and (not isinstance(w, dict) or "_target_" not in w):
        raise ConfigError("optimizer.wrapper", w, "null or a node with _target_ (optimizer/wrapper=lookahead)")
    if step != "plain" and precision == "fp16":
        raise ConfigError("optimizer.step", step, "needs unscaled gradients, and fp16's GradScaler "
                                                  "scales them (no closures either); use bf16 or fp32")
    if distributed and step in ("closure", "create_graph"):
        why = ("L-BFGS-style closures run a rank-dependent number of passes" if step == "closure"
               else "DDP does not average the Hessian-vector products of a create_graph backward")
        raise ConfigError("optimizer.step", step, f"cannot run under torchrun/DDP: {why}; train in one process")


def check_param_groups(node: Any) -> None:
    """One-line errors for a `param_groups` node (null = one group, as torch builds it)."""
    if node is None:
        return
    if not isinstance(node, dict):
        raise ConfigError("optimizer.param_groups", node, "null or a mapping with matrices / no_decay / lr_scale")
    unknown = sorted(set(node) - {"matrices", "no_decay", "lr_scale"})
    if unknown:
        raise ConfigError(f"optimizer.param_groups.{unknown[0]}", node[unknown[0]],
                          "no such key (keys: matrices, no_decay, lr_scale)")
    m = node.get("matrices")
    if m is not None and not (isinstance(m, dict) and "_target_" in m):
        raise ConfigError("optimizer.param_groups.matrices", m, "null or an optimizer node with _target_")
    nd = node.get("no_decay") or []
    if not isinstance(nd, list) or any(k not in NO_DECAY_KINDS for k in nd):
        raise ConfigError("optimizer.param_groups.no_decay", nd, "a list drawn from " + ", ".join(NO_DECAY_KINDS))
    scale = node.get("lr_scale") or {}
    if not isinstance(scale, dict):
        raise ConfigError("optimizer.param_groups.lr_scale", scale, "a mapping group -> factor")
    for name, f in scale.items():
        if name not in GROUPS:
            raise ConfigError(f"optimizer.param_groups.lr_scale.{name}", f, "a group: " + ", ".join(GROUPS))
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0:
            raise ConfigError(f"optimizer.param_groups.lr_scale.{name}", f, "a number > 0")


def refuse_hydra_call_keys(s: dict) -> None:
    for key in HYDRA_CALL_KEYS:
        if key in s:
            raise ConfigError(f"scheduler.{key}", s[key], "no such key: a scheduler takes the optimizer and its "
                                                          "named settings (e.g. scheduler.step_size=3)")


def check_scheduler_values(s: dict) -> None:
    """The ranges of the `scheduler` node's settings (a node without `_target_` is no scheduler)."""
    if not isinstance(s, dict):
        raise ConfigError("scheduler", s, "a config group node such as scheduler=cosine or scheduler=none")
    if "_target_" not in s:
        return
    need_choice("scheduler.interval", s.get("interval", "epoch"), ("epoch", "step"))
    refuse_hydra_call_keys(s)
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
    if "decay_fraction" in s:
        need_num("scheduler.decay_fraction", s["decay_fraction"], gt=0, le=1)
        if s.get("warmup_fraction", 0) + s["decay_fraction"] > 1:
            raise ConfigError("scheduler.decay_fraction", s["decay_fraction"],
                              f"warmup_fraction + decay_fraction <= 1 (warmup_fraction={s.get('warmup_fraction')})")
    if "shape" in s:
        need_choice("scheduler.shape", s["shape"], WSD_SHAPES)
    for key in ("start_factor", "min_factor", "end_factor"):
        if key in s:
            need_num(f"scheduler.{key}", s[key], ge=0, le=1)
    if "warmup_steps" in s:
        need_int("scheduler.warmup_steps", s["warmup_steps"], 1)
    if "T_0" in s:
        need_int("scheduler.T_0", s["T_0"], 1)
        need_int("scheduler.T_mult", s.get("T_mult", 1), 1)
    if s.get("total_iters") is not None:
        need_int("scheduler.total_iters", s["total_iters"], 1)


def check_averaging(node: dict | None) -> None:
    """One-line errors for the `averaging` node, before any data are loaded."""
    if node is None:
        return
    need_choice("averaging.name", node.get("name"), AVERAGING_KINDS)
    if node["name"] == "ema":
        need_num("averaging.decay", node.get("decay"), gt=0, lt=1)
        need_int("averaging.every", node.get("every"), 1)
        need_num("averaging.start", node.get("start"), ge=0, lt=1)
    if node["name"] == "swa":
        need_int("averaging.start_epoch", node.get("start_epoch"), 1)
        if node.get("swa_lr") is not None:
            need_num("averaging.swa_lr", node["swa_lr"], gt=0)
            need_int("averaging.anneal_epochs", node.get("anneal_epochs"), 1)
            need_choice("averaging.anneal_strategy", node.get("anneal_strategy"), ("cos", "linear"))
        need_int("averaging.bn_batches", node.get("bn_batches"), 0)
