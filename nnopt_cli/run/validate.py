"""`validate`: the checks a whole run config passes before any data is loaded, each group by its
home module (models, optim, batch_size, clip, early_stopping, observers, ...).

Each check names the key, the value given and what is allowed (ConfigError), so a typo costs
one line of output and no training time. The checks come in two steps: `check_structure` needs no
torch (this module imports none), so the errors it finds are answered in a fraction of a second;
`check_components` then imports the groups' modules (torch) for the classes, shapes and devices.
Post-training stages are checked by post.validate_post.
"""

from __future__ import annotations

from nnopt_cli.config.checks import need_bool, need_choice, need_int, need_keys
from nnopt_cli.errors import ConfigError
from nnopt_cli.optim.batch_size import MAX_BATCH, check_batch_size
from nnopt_cli.store.folder import CHECKPOINT_KEEP
from nnopt_cli.training.device import max_threads
from nnopt_cli.training.launch import launched_by_torchrun

MAX_EPOCHS = 1_000_000      # more is a typo; the whole batch schedule is planned up front
MAX_SEED = 2**63 - 1        # torch.Generator takes 64-bit seeds; DDP adds the rank to it

# keys every run config has (conf/train.yaml); a hand-written or truncated config lacks some
TOP_LEVEL_KEYS = ("dataset", "model", "activation", "init", "optimizer", "scheduler", "regularizer", "batch_size",
                  "grad_clip", "epochs", "seed", "device", "threads", "deterministic", "precision",
                  "eval_batch_size", "log_every", "early_stopping", "checkpoint", "resume", "skip_completed")


def validate(cfg: dict) -> None:
    """Check a resolved run config (plain dict) before any data is loaded: each group by its own
    module's check. Raises ConfigError on the first problem found. Post-training stages are
    checked by post.validate_post (the runner calls both)."""
    check_structure(cfg)
    check_components(cfg)


def check_structure(cfg: dict) -> None:
    """The checks that need no torch: the keys a run config has, the top-level values' ranges and
    the batch-size schedule."""
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


def check_components(cfg: dict) -> None:
    """The checks of each group by its home module, which imports torch: classes named by
    `_target_`, the model's shapes, the optimizer's arguments, the device."""
    from nnopt_cli import data, models
    from nnopt_cli.data import check_dataset
    from nnopt_cli.optim.averaging import check as check_averaging
    from nnopt_cli.optim.optimizers import check_optimizer
    from nnopt_cli.optim.schedulers import check_scheduler
    from nnopt_cli.post import validate_post
    from nnopt_cli.run.transfer import check_transfer
    from nnopt_cli.training.clip import check_grad_clip
    from nnopt_cli.training.early_stopping import check_early_stopping
    from nnopt_cli.training.loss import check_loss
    from nnopt_cli.training.observers import check_observers
    from nnopt_cli.training.precision import check_precision
    from nnopt_cli.training.regularizer import check_regularizer

    check_precision(cfg["precision"])
    check_dataset(cfg["dataset"])
    models.check(cfg, data.input_shape(cfg["dataset"]), data.num_classes(cfg["dataset"]))
    check_optimizer(cfg["optimizer"], cfg["precision"], launched_by_torchrun())
    check_scheduler(cfg["scheduler"])
    check_regularizer(cfg["regularizer"])
    check_loss(cfg.get("loss"))
    check_transfer(cfg)
    check_grad_clip(cfg["grad_clip"])
    check_averaging(cfg.get("averaging"))
    check_early_stopping(cfg["early_stopping"])
    check_observers(cfg)
    validate_post(cfg)  # post-training stages: checked before training starts
