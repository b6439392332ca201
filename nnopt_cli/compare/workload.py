"""Workloads: the problem a run solves, which a comparison never averages across.

A workload is the dataset and its settings, the model and its settings, and the budget (epochs)
(AlgoPerf: a workload is a dataset, a model and a target within a budget). Runs on different
workloads are not draws of one distribution: a mean over MNIST and MNIST-1D accuracies describes
neither. So `--group-by` groups within each workload (the workload keys that differ become
columns of the grouped table), and every statistic, baseline, target, curve and front is taken
within one workload; only the performance profile compares across workloads, by definition.

A model key named in `--group-by` (`model.dropout`, `model.batch_norm`, `model`) is what the
comparison is about, not its workload: on one dataset and budget, accuracies of two models are
draws one can compare. Dataset keys and the budget stay the workload even when grouped by.
"""

from __future__ import annotations

from typing import Any

from nnopt_cli.compare.discover import Run
from nnopt_cli.compare.render import fmt
from nnopt_cli.compare.table import differing_keys, hashable
from nnopt_cli.store.layout import PLACE_KEYS

# config groups whose choice and settings make the workload, and the budget keys
GROUPS = ("dataset", "model")
BUDGET = ("epochs",)


def is_workload_key(key: str) -> bool:
    return (key.split(".", 1)[0] in GROUPS or key in BUDGET) and key not in PLACE_KEYS


def columns(runs: list[Run], group_by: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The workload keys whose value differs between the runs (none: they share one workload),
    less the model keys the comparison groups by.

    A group's choice stands for the settings it implies (differing_keys), so MNIST vs MNIST-1D is
    the one column `dataset`, while two MNIST subsets of different sizes add `dataset.train_size`."""
    compared = {k for k in group_by if k.split(".", 1)[0] == "model"}
    return [k for k in differing_keys(runs) if is_workload_key(k)
            and not any(k == c or k.startswith(c + ".") for c in compared)]


def of(run: Run, keys: list[str]) -> tuple[Any, ...]:
    """The run's workload: its values of the differing workload keys."""
    return tuple(hashable(run.config.get(k)) for k in keys)


def label(run: Run, keys: list[str]) -> str:
    """`dataset=mnist epochs=4`; empty when all runs share one workload."""
    return " ".join(f"{k}={fmt(run.config.get(k))}" for k in keys)
