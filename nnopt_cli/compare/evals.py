"""A run's evaluations over time, and how long it took to reach a target (`--target val/acc=0.97`).

A run that evaluated every N steps (`eval_every_steps`) wrote evals.jsonl: one row per evaluation
with cumulative counters (total_steps, samples_seen, train_s, ...). Otherwise its metrics.jsonl
epoch rows are its evaluations; rows written before the counters existed get total_steps summed
from the per-epoch `steps`, and train_s from the per-epoch `time_s` (which there includes the
evaluation time); their samples are unknown.

Time to target follows AlgoPerf: the first evaluation that reaches the target; inf when no
evaluation does, and for a diverged run (its numbers cannot be trusted, whatever it reached).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nnopt_cli.compare.discover import Run, finite
from nnopt_cli.compare.files import read_jsonl
from nnopt_cli.compare.table import CompareError, descending_by_default
from nnopt_cli.store.layout import EVALS, Status

# --target-time name -> the cumulative counter in an evaluation row
TIME_KEYS = {"epochs": "epoch", "steps": "total_steps", "samples": "samples_seen", "seconds": "train_s"}


@dataclass(frozen=True)
class Target:
    """Reach `metric` >= value (mode max, accuracy) or <= value (mode min, loss); only on `dataset`
    when one is named."""

    metric: str
    value: float
    mode: str
    dataset: str | None = None

    def text(self) -> str:
        where = f"{self.dataset}: " if self.dataset else ""
        return f"{where}{self.metric} {'>=' if self.mode == 'max' else '<='} {self.value:g}"


def parse_target(spec: str) -> Target:
    """`val/acc=0.97` (direction from the name: loss-like names go down), `val/loss<=0.1`,
    `val/acc>=0.97`; `mnist1d:val/acc=0.6` applies to the runs on that dataset only."""
    dataset, metric_part = None, spec
    if ":" in spec.split("=", 1)[0].split("<", 1)[0].split(">", 1)[0]:
        dataset, metric_part = spec.split(":", 1)
    op = next((o for o in (">=", "<=", "=") if o in metric_part), None)
    if op is None:
        raise CompareError(f"--target {spec!r}: expected METRIC=VALUE, e.g. --target val/acc=0.97")
    metric, text = (part.strip() for part in metric_part.split(op, 1))
    mode = {">=": "max", "<=": "min"}.get(op)
    try:
        value = float(text)
    except ValueError:
        raise CompareError(f"--target {spec!r}: {text!r} is not a number") from None
    if not metric or not math.isfinite(value):
        raise CompareError(f"--target {spec!r}: expected METRIC=VALUE with a finite value, e.g. val/acc=0.97")
    mode = mode or ("max" if descending_by_default(metric, True) else "min")
    return Target(metric, value, mode, dataset.strip() if dataset else None)


def target_for(run: Run, targets: list[Target]) -> Target | None:
    """The target naming the run's dataset, else the one naming none."""
    dataset = run.config.get("dataset")
    named = [t for t in targets if t.dataset is not None and t.dataset == dataset]
    return (named or [t for t in targets if t.dataset is None] or [None])[0]


def eval_rows(run: Run) -> list[dict[str, Any]]:
    """The run's evaluations in order, each with its cumulative counters where known."""
    path = run.path / EVALS
    if path.is_file():
        rows, _ = read_jsonl(path)  # a torn last line (run still writing) leaves the rows before it
        if rows:
            return rows
    out = []
    steps = seconds = 0.0
    for row in run.epochs:
        r = dict(row)
        if "total_steps" not in r and finite(r.get("steps")):
            steps += r["steps"]
            r["total_steps"] = steps
        if "train_s" not in r and finite(r.get("time_s")):
            seconds += r["time_s"]
            r["train_s"] = seconds
        out.append(r)
    return out


def time_to_target(run: Run, target: Target) -> dict[str, float | None]:
    """{epochs, steps, samples, seconds} at the first evaluation reaching the target: inf if none
    did or the run diverged, None for a counter the run did not record."""
    from nnopt_cli.compare import stats

    rows = eval_rows(run)
    out: dict[str, float | None] = {}
    for name, key in TIME_KEYS.items():
        if not any(finite(r.get(key)) for r in rows):
            out[name] = None
        elif run.status == Status.DIVERGED:
            out[name] = math.inf
        else:
            values = [r.get(target.metric) if finite(r.get(target.metric)) else math.nan for r in rows]
            times = [r.get(key) if finite(r.get(key)) else math.nan for r in rows]
            t = stats.time_to_target(values, times, target.value, target.mode)
            out[name] = math.inf if math.isnan(t) else t
    return out


def eval_metrics(runs: list[Run]) -> list[str]:
    """Metric names any run evaluated (for checking --target), in first-seen order."""
    seen: dict[str, None] = {}
    for r in runs:
        for row in eval_rows(r)[:1] + r.epochs[:1]:
            for k, v in row.items():
                if "/" in k and (finite(v) or v is None):
                    seen.setdefault(k, None)
    return list(seen)
