"""Configuration: where nnopt's Hydra configs live (conf/), and the checks and builders over them.

    checks.py     need_* value checks every config group uses (one line per bad value)
    overrides.py  command-line overrides checked before Hydra composes anything
    build.py      instantiate a checked node with its `_target_`
    datasets.py   what a `dataset` node says without loading it: names, task, classes, shape, ranges
    stages.py     the post-training stages a config names and their settings' ranges

Kept free of torch so `nnopt compare` and `--help` start fast.
"""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    """conf/ inside an installed wheel, or the repository's conf/ in a checkout / editable install."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").exists():
            return candidate
    raise FileNotFoundError(f"nnopt's conf/ folder not found next to {package}")
