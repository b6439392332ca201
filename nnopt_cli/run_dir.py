"""The files a run folder holds, written so that a crash never leaves a half-written one.

metrics.jsonl  one JSON object per epoch, appended as whole lines and fsynced
summary.json   status and final numbers, replaced atomically (tmp file + fsync + rename)
model.pt       the final state_dict, replaced atomically
checkpoint.pt  everything needed to resume (see checkpoint.py), replaced atomically
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from nnopt_cli.errors import NnoptError

log = logging.getLogger("nnopt")


class RunDirError(NnoptError):
    """A file of a run folder is missing or corrupt."""


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every JSON reader can load the file."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a crash right after it must not bring the old file back)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(_clean(obj), indent=2) + "\n").encode())


def save_state_dict(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_metrics(path: Path) -> list[dict]:
    """Read metrics.jsonl. A torn last line (the run was killed while writing it) is skipped
    with a warning; a bad line before the last means the file is corrupt: RunDirError."""
    rows: list[dict] = []
    if not path.exists():
        return rows
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    except OSError as e:
        raise RunDirError(f"cannot read {path}: {e}") from None
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline, as every complete row does
    for i, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError:  # json.JSONDecodeError is a ValueError
            if i == len(lines):
                log.warning("%s: ignored a torn last line (the run was killed while writing it)", path)
                break
            raise RunDirError(f"{path} is corrupt: line {i} is not a JSON object") from None
        rows.append(row)
    return rows


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.model_path = self.path / "model.pt"
        self.checkpoint_path = self.path / "checkpoint.pt"

    def append_metrics(self, row: dict) -> None:
        self.append_jsonl(self.metrics_path, row)

    def append_jsonl(self, path: Path, row: dict) -> None:
        """Append one whole line and fsync it: a kill leaves at most a torn last line, which readers skip."""
        line = json.dumps(_clean(row)) + "\n"
        with open(path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def write_rows_kept(self, path: Path, keep) -> None:
        """Drop the rows a killed run wrote after its last checkpoint (resume redoes them)."""
        if path.exists():
            rows = [r for r in read_metrics(path) if keep(r)]
            atomic_write_bytes(path, "".join(json.dumps(_clean(r)) + "\n" for r in rows).encode())

    def write_metrics(self, rows: list[dict]) -> None:
        """Replace metrics.jsonl with `rows` (a resumed run drops rows written after its checkpoint)."""
        atomic_write_bytes(self.metrics_path, "".join(json.dumps(_clean(r)) + "\n" for r in rows).encode())

    def save_checkpoint(self, checkpoint: dict) -> None:
        save_state_dict(self.checkpoint_path, checkpoint)

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)

    def save_model(self, model: torch.nn.Module, name: str = "model.pt") -> Path:
        path = self.path / name
        save_state_dict(path, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        return path
