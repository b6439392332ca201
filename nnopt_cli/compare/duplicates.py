"""Runs of the same experiment found twice (a sweep rerun into a second folder, a copied run folder).

Two finished runs whose configs compute the same experiment (discover.identity: seed included,
device, threads and file locations aside) are one draw of the experiment, not two: averaging both
would count that seed twice in every mean, interval and test. Compare keeps the most recent
(summary.json `finished_at`, else the file's modification time), preferring a completed run to a
diverged one, and drops the others before any table or statistic is built.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from nnopt_cli.compare.discover import Run
from nnopt_cli.store.layout import SUMMARY, Status

# statuses whose numbers enter a statistic (a diverged run counts in time to target)
COUNTED = (Status.COMPLETED, Status.DIVERGED)


@dataclass
class Duplicates:
    kept: Run
    dropped: list[Run]

    def warning(self) -> str:
        names = ", ".join(r.label for r in self.dropped)
        return (f"{len(self.dropped) + 1} runs of the same experiment (same config and seed): kept "
                f"{self.kept.label} (the most recent {self.kept.status} one), not counted again: {names}")


def finished_time(run: Run) -> float:
    """When the run ended: summary.json's finished_at, else the summary's modification time."""
    text = run.summary.get("finished_at")
    if isinstance(text, str):
        try:
            return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
        except ValueError:
            pass
    try:
        return (run.path / SUMMARY).stat().st_mtime
    except OSError:
        return 0.0


def _recency(run: Run) -> tuple:
    try:
        mtime = (run.path / SUMMARY).stat().st_mtime_ns
    except OSError:
        mtime = 0
    return (run.completed, finished_time(run), mtime, run.label)


def drop_duplicates(runs: list[Run]) -> tuple[list[Run], list[Duplicates]]:
    """The runs with each experiment's duplicates removed (order kept), and one entry per set."""
    sets: dict[str, list[Run]] = {}
    for r in runs:
        if r.identity is not None and r.status in COUNTED:
            sets.setdefault(r.identity, []).append(r)
    found = []
    dropped: set[int] = set()
    for members in sets.values():
        if len(members) > 1:
            kept = max(members, key=_recency)
            others = [r for r in members if r is not kept]
            dropped.update(id(r) for r in others)
            found.append(Duplicates(kept, others))
    return [r for r in runs if id(r) not in dropped], found
