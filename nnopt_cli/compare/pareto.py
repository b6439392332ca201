"""The Pareto front a multi-objective `nnopt tune` study left in its folder (pareto.json), as a
table for `nnopt compare <study folder>`, `nnopt report` and `nnopt tune`'s own last lines.

pareto.json may come from anywhere: it is read through store/untrusted (regular file, size cap)
and its shape is checked before a cell is shown; one that does not fit is a warning, never a
table with numbers from the wrong place. Each front member's numbers are checked against its
trial's own summary.json when that run folder is among the runs read: a run changed after the
study (resumed or retrained by hand) is pointed out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnopt_cli.compare.discover import Run, is_number
from nnopt_cli.compare.table import Column, Table
from nnopt_cli.store import layout, untrusted
from nnopt_cli.store.untrusted import SUMMARY_MAX_BYTES


@dataclass
class Front:
    folder: Path
    study: str
    objectives: list[dict[str, str]]
    members: list[dict[str, Any]]
    n_trials: int  # completed trials the front was chosen from
    notes: list[str] = field(default_factory=list)

    def title(self) -> str:
        goals = ", ".join(f"{o['direction']} {o['name']}" for o in self.objectives)
        return (f"Pareto front of study {self.study} ({self.folder}): {len(self.members)} of {self.n_trials} "
                f"completed trials ({goals})")


def _shape_problem(rec: dict) -> str | None:
    objs = rec.get("objectives")
    if not isinstance(objs, list) or len(objs) < 2 or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) and o.get("direction") in ("maximize", "minimize")
            for o in objs):
        return "'objectives' is not a list of {name, direction}"
    for key in ("front", "trials"):
        rows = rec.get(key)
        if not isinstance(rows, list) or not all(
                isinstance(m, dict) and isinstance(m.get("trial"), int) and not isinstance(m.get("trial"), bool)
                and isinstance(m.get("values"), list) and len(m["values"]) == len(objs)
                and all(is_number(v) and math.isfinite(v) for v in m["values"]) for m in rows):
            return f"'{key}' is not a list of {{trial, values}} with one finite number per objective"
    if not all(isinstance(m.get("params"), dict) for m in rec["front"]):
        return "a front member has no 'params' mapping"
    return None


def read(folder: Path) -> tuple[Front | None, str | None]:
    """(the front in `folder`/pareto.json, None), (None, why it cannot be shown), or (None, None)
    when the folder holds none."""
    path = Path(folder) / layout.PARETO
    if not path.exists() and not path.is_symlink():
        return None, None
    try:
        text = untrusted.read_text(path, SUMMARY_MAX_BYTES)
    except (untrusted.UntrustedFileError, OSError) as e:
        return None, f"{path}: {str(e).removeprefix(f'{path} ')}"
    rec, why = untrusted.json_object(text)
    why = why or _shape_problem(rec)
    if why:
        return None, f"{path}: {why}; its front is not shown"
    study = rec.get("study") if isinstance(rec.get("study"), str) else Path(folder).name
    return Front(Path(folder), study, rec["objectives"], rec["front"], len(rec["trials"])), None


def check_against_runs(front: Front, runs: list[Run]) -> None:
    """A note per front number that differs from its trial's summary.json (the run changed since)."""
    by_path = {r.path.resolve(): r for r in runs}
    for m in front.members:
        run = by_path.get((front.folder / str(m["trial"])).resolve())
        if run is None:
            front.notes.append(f"trial {m['trial']}: its run folder is not among the runs read")
            continue
        have = run.metrics()
        for o, v in zip(front.objectives, m["values"], strict=True):
            now = have.get(o["name"])
            if not (is_number(now) and math.isclose(now, v, rel_tol=1e-9, abs_tol=1e-12)):
                front.notes.append(f"trial {m['trial']}: {o['name']} is {now} in its summary.json, {v} in "
                                   f"{layout.PARETO} (the run changed after the study)")


def table(front: Front) -> Table:
    """One row per front member: trial, its parameters, each objective's value."""
    params: list[str] = []
    for m in front.members:
        params += [k for k in m["params"] if k not in params]
    names = [o["name"] for o in front.objectives]
    cols = [Column("trial", "run"), *(Column(k, "config") for k in params), *(Column(n, "metric") for n in names)]
    rows = [{"trial": m["trial"], **{k: m["params"].get(k) for k in params},
             **dict(zip(names, m["values"], strict=True))} for m in front.members]
    first: dict[str, int] = {}
    repeats = []
    for m in front.members:  # a sampler may propose the same point again: one result, shown twice
        key = json.dumps(m["params"], sort_keys=True, default=str)
        if key in first:
            repeats.append(f"trial {m['trial']} repeats the parameters of trial {first[key]}")
        first.setdefault(key, m["trial"])
    return Table(cols, rows, notes=[*front.notes, *repeats])


def find(paths: list[Path], runs: list[Run]) -> tuple[list[Front], list[str]]:
    """The fronts in the given folders (a study folder given as a path), and a warning per unreadable one."""
    fronts, problems = [], []
    for p in paths:
        front, why = read(p)
        if why:
            problems.append(why)
        if front is not None:
            check_against_runs(front, runs)
            fronts.append(front)
    return fronts, problems
