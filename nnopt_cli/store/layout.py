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
    <run>/model.<stage>.pt       post-training stages' models

Torch-free: `nnopt compare` reads folders with these names.
"""

from __future__ import annotations

from enum import StrEnum

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
LOG = "train.log"
SWEEP_REPORT = "report.json"


class Status(StrEnum):
    """A run's `status` in summary.json, a post-training stage's in its entry, and a sweep job's in
    report.json. A StrEnum: it is written, compared and printed as its plain value."""

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
