"""The run folder's layout: every file name and status nnopt writes or reads, in one place.

    <run>/.hydra/config.yaml     Hydra's resolved config (+ overrides.yaml)
    <run>/summary.json           status and final numbers (replaced atomically)
    <run>/metrics.jsonl          one row per epoch (appended, fsynced)
    <run>/evals.jsonl            one row per evaluation when eval_every_steps is set (epoch ends included)
    <run>/model.pt               the final state_dict
    <run>/model.init.pt          the weights before the first step (loss landscapes, init_from)
    <run>/checkpoint.pt          everything resume needs
    <run>/diagnostics.jsonl      per-layer diagnostics (diagnostics=basic|full)
    <run>/model.<stage>.pt       post-training stages' models
"""

from __future__ import annotations

HYDRA_DIR = ".hydra"
CONFIG = ".hydra/config.yaml"
OVERRIDES = ".hydra/overrides.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
EVALS = "evals.jsonl"
MODEL = "model.pt"
INIT_MODEL = "model.init.pt"
CHECKPOINT = "checkpoint.pt"
DIAGNOSTICS = "diagnostics.jsonl"
LOG = "train.log"
SWEEP_REPORT = "report.json"

# summary.json "status"
RUNNING = "running"
POST_TRAINING = "post_training"
COMPLETED = "completed"
DIVERGED = "diverged"
FAILED = "failed"
INTERRUPTED = "interrupted"
PRUNED = "pruned"  # ended early by an observer (a tuning trial the pruner stopped)
# finished experiments: rerunning them gives the same result, so sweeps skip them
DONE = (COMPLETED, DIVERGED, PRUNED)
