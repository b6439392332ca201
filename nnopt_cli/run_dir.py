"""The files a run folder holds, written so that a crash never leaves a half-written one.

metrics.jsonl  one JSON object per epoch, appended as whole lines and fsynced
summary.json   status and final numbers, replaced atomically (tmp file + fsync + rename)
model.pt       the final state_dict, replaced atomically
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every JSON reader can load the file."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(_clean(obj), indent=2) + "\n").encode())


def save_state_dict(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    """Read metrics.jsonl, ignoring a torn last line (a crash mid-write)."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.model_path = self.path / "model.pt"

    def append_metrics(self, row: dict) -> None:
        line = json.dumps(_clean(row)) + "\n"
        with open(self.metrics_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)

    def save_model(self, model: torch.nn.Module, name: str = "model.pt") -> Path:
        path = self.path / name
        save_state_dict(path, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        return path
