"""`validate`: the checks a whole run config passes before any data is loaded: every value first,
without torch (structure.py, through each group's checks module), then what needs torch (the
classes named by `_target_`, the model's shapes, the optimizer's trial step, observers, stages).

Each check names the key, the value given and what is allowed (ConfigError), so a typo costs
one line of output and no training time. `nnopt train` runs check_structure before it imports
this module.
"""

from __future__ import annotations

from nnopt_cli import data, models
from nnopt_cli.optim.optimizers import check_optimizer
from nnopt_cli.optim.schedulers import check_scheduler
from nnopt_cli.post import validate_post
from nnopt_cli.run.structure import check_structure
from nnopt_cli.run.transfer import check_transfer
from nnopt_cli.training.hogwild import check_async_sgd
from nnopt_cli.training.launch import launched_by_torchrun
from nnopt_cli.training.observers import check_observers


def validate(cfg: dict) -> None:
    """Check a resolved run config (plain dict) before any data is loaded: each group by its own
    module's check. Raises ConfigError on the first problem found. Post-training stages are
    checked by post.validate_post (the runner calls both)."""
    check_structure(cfg)
    check_components(cfg)


def check_components(cfg: dict) -> None:
    """What needs torch, after check_structure: your own data's function or files, the classes named
    by `_target_`, the model's shapes, the optimizer's arguments and trial step, the post-training stages."""
    data.check_sources(cfg["dataset"])
    models.check(cfg, data.input_shape(cfg["dataset"]), data.num_classes(cfg["dataset"]))
    check_optimizer(cfg["optimizer"], cfg["precision"], launched_by_torchrun())
    check_scheduler(cfg["scheduler"])
    check_transfer(cfg)
    check_async_sgd(cfg, launched_by_torchrun())
    check_observers(cfg)
    validate_post(cfg)  # post-training stages: checked before training starts
