"""Where nnopt's Hydra configs live (conf/). Kept free of torch so `nnopt compare` starts fast.

The checks a run config passes before any work starts are in validate.py; the need_* value
checks every group uses are in checks.py (importable from here too).
"""

from __future__ import annotations

from pathlib import Path

from nnopt_cli.checks import need_choice, need_int, need_int_list, need_num

__all__ = ["conf_dir", "need_choice", "need_int", "need_int_list", "need_num"]


def conf_dir() -> Path:
    """conf/ inside an installed wheel, or the repository's conf/ in a checkout / editable install."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").exists():
            return candidate
    raise FileNotFoundError(f"nnopt's conf/ folder not found next to {here}")
