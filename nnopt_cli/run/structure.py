"""`check_structure`: the checks of a run config that need no torch, so that the errors they find
are answered in a fraction of a second (`nnopt train` runs them before importing torch): the keys
every run config has, the top-level values' ranges, the batch-size schedule and every group's
numbers and names (each group's torch-free checks module). validate.py runs them first, then what
needs torch (classes, model shapes, trial steps).
"""

from __future__ import annotations

from nnopt_cli.config import datasets
from nnopt_cli.config.checks import need_bool, need_choice, need_int, need_keys
from nnopt_cli.config.stages import check_post_values, stage_names
from nnopt_cli.errors import ConfigError
from nnopt_cli.optim.batch_size import MAX_BATCH, check_batch_size
from nnopt_cli.optim.checks import check_averaging, check_optimizer_values, check_scheduler_values
from nnopt_cli.store.folder import CHECKPOINT_KEEP
from nnopt_cli.training.checks import (
    check_early_stopping,
    check_grad_clip,
    check_loss,
    check_precision,
    check_regularizer,
)
from nnopt_cli.training.device import max_threads
from nnopt_cli.training.launch import launched_by_torchrun

MAX_EPOCHS = 1_000_000      # more is a typo; the whole batch schedule is planned up front
MAX_SEED = 2**63 - 1        # torch.Generator takes 64-bit seeds; DDP adds the rank to it

# keys every run config has (conf/train.yaml); a hand-written or truncated config lacks some
TOP_LEVEL_KEYS = ("dataset", "model", "activation", "init", "optimizer", "scheduler", "regularizer", "batch_size",
                  "grad_clip", "epochs", "seed", "device", "threads", "deterministic", "precision",
                  "eval_batch_size", "log_every", "early_stopping", "checkpoint", "resume", "skip_completed")


def check_structure(cfg: dict) -> None:
    """The checks that need no torch: the keys a run config has, the top-level values' ranges, the
    batch-size schedule and each group's values."""
    need_keys("<config>", cfg, TOP_LEVEL_KEYS)
    need_int("epochs", cfg["epochs"], 1, MAX_EPOCHS)
    need_int("seed", cfg["seed"], 0, MAX_SEED)
    if cfg["threads"] is not None:
        need_int("threads", cfg["threads"], 1, max_threads())  # 100000 threads crash torch
    need_int("eval_batch_size", cfg["eval_batch_size"], 1, MAX_BATCH)
    need_int("log_every", cfg["log_every"], 1)
    if cfg.get("eval_every_steps") is not None:
        need_int("eval_every_steps", cfg["eval_every_steps"], 1)
    need_keys("checkpoint", cfg["checkpoint"], ("every",))  # `~checkpoint.every`: one line, not a KeyError
    need_int("checkpoint.every", cfg["checkpoint"]["every"], 0)
    need_choice("checkpoint.keep", cfg["checkpoint"].get("keep", "last"), CHECKPOINT_KEEP)
    need_bool("skip_completed", cfg["skip_completed"])
    if cfg["resume"] is not None and not isinstance(cfg["resume"], str):
        raise ConfigError("resume", cfg["resume"], "the path of a run folder")
    if cfg.get("continue_from") is not None and (not isinstance(cfg["continue_from"], str) or not cfg["continue_from"]):
        raise ConfigError("continue_from", cfg["continue_from"], "the path of a completed run folder")
    need_bool("deterministic", cfg["deterministic"])
    check_batch_size(cfg["batch_size"], cfg["scheduler"], batch_norm=bool(cfg["model"].get("batch_norm")))
    check_groups(cfg)


def check_groups(cfg: dict) -> None:
    """Each group's numbers and names, by the group's torch-free checks."""
    check_precision(cfg["precision"])
    datasets.check_dataset_values(cfg["dataset"])
    check_optimizer_values(cfg["optimizer"], cfg["precision"], launched_by_torchrun())
    check_scheduler_values(cfg["scheduler"])
    check_regularizer(cfg["regularizer"])
    check_loss(cfg.get("loss"), datasets.stated_num_classes(cfg["dataset"]), datasets.task(cfg["dataset"]))
    check_grad_clip(cfg["grad_clip"])
    check_averaging(cfg.get("averaging"))
    check_early_stopping(cfg["early_stopping"])
    check_post_values(cfg)
    if datasets.task(cfg["dataset"]) == datasets.REGRESSION:
        check_regression(cfg)


def check_regression(cfg: dict) -> None:
    """What needs classes is refused for dataset=regression, in one line."""
    why = "for dataset=regression (it has no classes"
    if cfg["batch_size"].get("sampler", "random") != "random":
        raise ConfigError("batch_size.sampler", cfg["batch_size"]["sampler"], f"random {why} to balance)")
    stopping = cfg["early_stopping"]
    if stopping["enabled"] and stopping["monitor"] == "val/acc":
        raise ConfigError("early_stopping.monitor", "val/acc", f"val/loss (the validation MSE) {why}: no accuracy)")
    if cfg["scheduler"].get("monitor") == "val/acc":
        raise ConfigError("scheduler.monitor", "val/acc", f"val/loss (the validation MSE) {why}: no accuracy)")
    if any(name != "prune" for name in stage_names(cfg)):
        raise ConfigError("post", stage_names(cfg), f"null or prune {why}: quantize and distill score by accuracy)")
