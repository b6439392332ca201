"""The data behind the deciding plots (`--plot-kind lr | target | profile`); plots.py draws them."""

from __future__ import annotations

import sys

from matplotlib.figure import Figure

from nnopt_cli.compare import plots, workload
from nnopt_cli.compare.decide import group_name, profile_times
from nnopt_cli.compare.discover import Run, finite
from nnopt_cli.compare.evals import Target
from nnopt_cli.compare.render import fmt
from nnopt_cli.compare.table import Interval


def figure(args, shown: list[Run], table, group_by: list[str], metric: str | None, times: dict,
           targets: list[Target]) -> Figure:
    if args.plot_kind == "lr":
        return lr(shown, group_by, metric or "test/acc")
    target_text = "; ".join(t.text() for t in targets)
    if args.plot_kind == "target":
        return target_bars(table, group_by, args.target_time, target_text)
    return profile(shown, group_by, times, args.target_time)


def lr(shown: list[Run], group_by: list[str], metric: str) -> Figure:
    """One line per optimizer (or per --group-by group, the LR aside) and workload, over the
    completed runs: runs on different workloads never share a line."""
    done = [r for r in shown if r.completed]
    wkeys = workload.columns(done)
    keys = [*wkeys, *(k for k in group_by if k != "optimizer.lr" and k not in wkeys)]
    if not group_by:
        keys.append("optimizer")
    series: dict[str, list[tuple[float, float]]] = {}
    for r in done:
        lr_, v = r.config.get("optimizer.lr"), r.metrics().get(metric)
        if finite(lr_) and lr_ > 0 and finite(v):
            label = " ".join(f"{k}={fmt(r.config.get(k))}" for k in keys)
            series.setdefault(label, []).append((float(lr_), float(v)))
    return plots.lr_figure(dict(sorted(series.items())), metric)


def target_bars(table, group_by: list[str], time_name: str, target_text: str) -> Figure:
    bars = []
    for row in table.rows:
        v = row.get(f"target_{time_name}")
        if table.grouped:
            if isinstance(v, Interval):
                reached = f"{row['target_reached']} reached"
                bars.append((group_name(row, group_by), v.value, v.lo, v.hi, reached))
        else:
            reached = row.get("target_reached")
            t = v if finite(v) else float("inf")
            bars.append((row["run"], t, t, t, "reached" if reached == "yes" else str(reached)))
    return plots.target_figure(bars, time_name, target_text)


def profile(shown: list[Run], group_by: list[str], times: dict, time_name: str) -> Figure:
    import numpy as np

    from nnopt_cli.compare import stats

    labels, workloads, matrix = profile_times(shown, group_by, times, time_name)
    ratios = stats.performance_ratios(np.array(matrix, dtype=float))
    scores = stats.profile_score(ratios)
    taus = np.linspace(1.0, stats.TAU_MAX, 601)
    rho = stats.performance_profile(ratios, taus)
    ranked = sorted(zip(labels, scores, strict=True), key=lambda p: -p[1])
    print(f"nnopt compare: performance profile ({time_name} to target, {len(workloads)} workload(s)), score: "
          + ", ".join(f"{lab} {s:.3f}" for lab, s in ranked), file=sys.stderr)
    return plots.profile_figure(labels, rho, taus, scores, time_name, workloads)

