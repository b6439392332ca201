"""The run folder's layout: every file name and status nnopt writes or reads, in one place.

    <run>/.hydra/config.yaml     Hydra's resolved config (+ overrides.yaml, hydra.yaml)
    <run>/summary.json           status and final numbers (replaced atomically)
    <run>/metrics.jsonl          one row per epoch (appended, fsynced)
    <run>/evals.jsonl            one row per evaluation when eval_every_steps is set (epoch ends included)
    <run>/model.pt               the final state_dict
    <run>/model.init.pt          the weights before the first step (loss landscapes, init_from)
    <run>/checkpoint.pt          everything resume needs (checkpoint.keep decides whether it stays)
    <run>/checkpoint.best.pt     the checkpoint of the best validation epoch (checkpoint.keep=best)
    <run>/diagnostics.jsonl      per-layer diagnostics (diagnostics=basic|full)
    <run>/metrics.csv            one row per epoch for spreadsheets (logger=csv)
    <run>/model.<stage>.pt       post-training stages' models
    <study>/pareto.json          a multi-objective `nnopt tune` study's Pareto front (+ pareto.png)

and which config keys make a run's identity (experiment_config): what the checkpoint's fingerprint
and compare's duplicate check look at.

Torch-free: `nnopt compare` reads folders with these names.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

HYDRA_DIR = ".hydra"
CONFIG = ".hydra/config.yaml"
HYDRA_CONFIG = ".hydra/hydra.yaml"
OVERRIDES = ".hydra/overrides.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
EVALS = "evals.jsonl"
MODEL = "model.pt"
INIT_MODEL = "model.init.pt"
CHECKPOINT = "checkpoint.pt"
BEST_CHECKPOINT = "checkpoint.best.pt"
DIAGNOSTICS = "diagnostics.jsonl"
METRICS_CSV = "metrics.csv"
LOG = "train.log"
SWEEP_REPORT = "report.json"
PARETO = "pareto.json"  # in a study folder: the front of a multi-objective `nnopt tune` study
PARETO_PLOT = "pareto.png"
LATEST = "latest"  # outputs/latest: a link to the last single run's folder


class Status(str, Enum):
    """A run's `status` in summary.json, a post-training stage's in its entry, and a sweep job's in
    report.json. A str: it is written, compared and printed as its plain value."""

    __str__ = str.__str__  # f"{status}" is the value on every Python nnopt supports
    __format__ = str.__format__

    RUNNING = "running"
    POST_TRAINING = "post_training"  # trained and tested; post-training stages under way
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped by a signal; its checkpoint resumes it
    PRUNED = "pruned"  # ended early by an observer (a tuning trial the pruner stopped)
    # sweep report only: what a job's own folder does not say
    SKIPPED = "skipped"  # done by an earlier run of the sweep (skip_completed)
    CRASHED = "crashed"  # the folder still says running / post_training: the process died


# statuses of a run whose process is (or was, if it died) still at work
UNFINISHED = (Status.RUNNING, Status.POST_TRAINING)


# ---------------------------------------------------------------------------- config identity
# Torch-free, so that compare (duplicate runs) and the checkpoint (resume) agree on them.

# config keys that say how a run is driven, not what it computes: they may differ on resume
NON_EXPERIMENT_KEYS = ("resume", "skip_completed", "checkpoint", "logger", "name", "tags")
# a run's labels (name=, tags=): in summary.json, the single-run folder's name and `nnopt ls`
LABEL_KEYS = ("name", "tags")
# where and how fast a run ran, and where its files are: two runs that differ only here (and in
# NON_EXPERIMENT_KEYS) computed the same experiment, so compare counts them once. Dotted for
# nested keys. The resume fingerprint (checkpoint.py) still includes them.
PLACE_KEYS = ("hydra", "threads", "device", "log_every", "dataset.root", "dataset.source_dir",
              "dataset.download")

# Keys added to nnopt after run folders existed, with the value that changes nothing. A key at
# that value is left out of the fingerprint, so a folder written before the key existed keeps
# its fingerprint and still resumes / skips. Add every new key here (dotted for nested keys).
NEUTRAL_VALUES: dict[str, Any] = {
    "observers": {},
    "diagnostics": None,
    "eval_every_steps": None,
    "loss.class_weights": None,  # before "loss": an unweighted cross-entropy is then {"name": ...} alone
    "loss": {"name": "cross_entropy"},
    "dataset.imbalance": None,
    "batch_size.sampler": "random",
    "init_from": None,
    "continue_from": None,
    "freeze": None,
    "post.prune.threshold": None,
    "post.quantize.bits": 8,
    "post.quantize.finetune_epochs": 1,
    "post.quantize.lr_scale": 1.0,
    "post.distill.targets": "soft",
    "post.quantize.scale": "auto",
    "post.quantize.scheme": "symmetric",
    "post.quantize.percentile": 99.9,
    "post.quantize.mean_factor": 1.0,
    "batch_size.accumulate": 1,
    "averaging": {"name": "none"},
    "async_sgd": {"mode": "none"},
}


def _drop_neutral(cfg: dict) -> dict:
    out = dict(cfg)
    for dotted, neutral in NEUTRAL_VALUES.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            child = node.get(p) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                node = None
                break
            node[p] = child = dict(child)  # copy on the way down: the caller's dict stays as it is
            node = child
        if isinstance(node, dict) and leaf in node and node[leaf] == neutral:
            del node[leaf]
    return out


def experiment_config(cfg: dict) -> dict:
    """The part of a resolved config that decides what a run computes."""
    return _drop_neutral({k: v for k, v in cfg.items() if k not in NON_EXPERIMENT_KEYS})
