"""The data behind the deciding plots (`--plot-kind lr | target | profile`); plots.py draws them."""

from __future__ import annotations

import sys

from matplotlib.figure import Figure

from nnopt_cli.compare import plots, workload
from nnopt_cli.compare.decide import group_name, profile_times
from nnopt_cli.compare.discover import Run, finite
from nnopt_cli.compare.evals import Target
from nnopt_cli.compare.files import read_yaml
from nnopt_cli.compare.render import fmt
from nnopt_cli.compare.table import Interval, descending_by_default, differing_keys
from nnopt_cli.config import conf_dir
from nnopt_cli.store.layout import PLACE_KEYS, Status


def figure(args, shown: list[Run], table, group_by: list[str], metric: str | None, times: dict,
           targets: list[Target]) -> Figure:
    if args.plot_kind == "lr":
        return lr(shown, group_by, metric or "test/acc")
    target_text = "; ".join(t.text() for t in targets)
    if args.plot_kind == "target":
        return target_bars(table, group_by, args.target_time, target_text, shown)
    return profile(shown, group_by, times, args.target_time)


def lr(shown: list[Run], group_by: list[str], metric: str) -> Figure:
    """One line per optimizer (or per --group-by group, the LR aside) and workload, over the
    completed runs: runs on different workloads never share a line."""
    done = [r for r in shown if r.completed]
    wkeys = workload.columns(done, group_by)
    keys = [*wkeys, *(k for k in group_by if k != "optimizer.lr" and k not in wkeys)]
    if not group_by:
        keys.append("optimizer")
    series: dict[str, plots.LrSeries] = {}
    optimizers: dict[str, set] = {}
    at_point: dict[tuple[str, float], list[Run]] = {}
    used = []
    for r in done:
        lr_, v = r.config.get("optimizer.lr"), r.metrics().get(metric)
        if finite(lr_) and lr_ > 0 and finite(v):
            label = " ".join(f"{k}={fmt(r.config.get(k))}" for k in keys)
            series.setdefault(label, plots.LrSeries(label, [])).points.append((float(lr_), float(v)))
            optimizers.setdefault(label, set()).add(fmt(r.config.get("optimizer")))
            at_point.setdefault((label, float(lr_)), []).append(r)
            used.append(r)
    for label, s in series.items():
        if len(optimizers[label]) == 1:
            s.default_lr = default_lr(next(iter(optimizers[label])))
    # a point's runs are seeds only when nothing else differs between them
    for (label, _), members in at_point.items():
        other = [k for k in differing_keys(members) if k != "seed" and k not in PLACE_KEYS
                 and k.split(".", 1)[0] not in PLACE_KEYS]
        series[label].also_differ = list(dict.fromkeys([*series[label].also_differ, *other]))
    mixed = [s for s in series.values() if s.also_differ]
    if mixed:
        print(f"nnopt compare: warning: LR sensitivity: the runs at one LR of {mixed[0].label} differ in "
              f"{', '.join(mixed[0].also_differ[:3])}, not only in seed: their mean mixes settings "
              "(add the key to --group-by, or --where it to one value)", file=sys.stderr)
    return plots.lr_figure([series[k] for k in sorted(series)], metric, used,
                           higher_is_better=descending_by_default(metric, True))


def default_lr(optimizer: str) -> float | None:
    """optimizer.lr of conf/optimizer/<optimizer>.yaml, or None for a name that is not one of ours
    (the name comes from a run folder: it only picks among the files listed there)."""
    folder = conf_dir() / "optimizer"
    try:
        ours = {p.stem for p in folder.glob("*.yaml")}
    except OSError:
        return None
    if optimizer not in ours:
        return None
    doc, _ = read_yaml(folder / f"{optimizer}.yaml")
    lr_ = doc.get("lr") if isinstance(doc, dict) else None
    return float(lr_) if finite(lr_) and lr_ > 0 else None


def target_bars(table, group_by: list[str], time_name: str, target_text: str, shown: list[Run]) -> Figure:
    bars, counts = [], []
    for row in table.rows:
        v = row.get(f"target_{time_name}")
        if table.grouped:
            if isinstance(v, Interval):
                reached = f"{row['target_reached']} reached"
                bars.append((group_name(row, group_by), v.value, v.lo, v.hi, reached))
                counts.append(row.get("runs"))
        else:
            reached = row.get("target_reached")
            t = v if finite(v) else float("inf")
            bars.append((row["run"], t, t, t, "reached" if reached == "yes" else str(reached)))
            counts.append(1)
    n = sorted({c for c in counts if isinstance(c, int)})
    per_bar = ("1 run per bar" if n == [1] else
               f"median of n={n[0] if len(n) == 1 else f'{n[0]}-{n[-1]}'} seeds per bar" if n else "")
    return plots.target_figure(bars, time_name, target_text, shown, per_bar)


def profile(shown: list[Run], group_by: list[str], times: dict, time_name: str) -> Figure:
    import numpy as np

    from nnopt_cli.compare import stats

    labels, workloads, matrix = profile_times(shown, group_by, times, time_name)
    ratios = stats.performance_ratios(np.array(matrix, dtype=float))
    scores = stats.profile_score(ratios)
    taus = np.linspace(1.0, stats.TAU_MAX, 601)
    rho = stats.performance_profile(ratios, taus)
    ranked = sorted(zip(labels, scores, strict=True), key=lambda p: -p[1])
    scores_text = "score: " + ", ".join(f"{lab} {s:.3f}" for lab, s in ranked)
    if len(workloads) < plots.MIN_PROFILE_WORKLOADS:
        print(f"nnopt compare: warning: performance profile ({time_name} to target) over {len(workloads)} "
              f"workload(s), fewer than {plots.MIN_PROFILE_WORKLOADS}: its scores rank nothing ({scores_text}); "
              "compare the groups with --target or --baseline instead", file=sys.stderr)
    else:
        print(f"nnopt compare: performance profile ({time_name} to target, {len(workloads)} workloads), "
              + scores_text, file=sys.stderr)
    done = [r for r in shown if r.completed or r.status == Status.DIVERGED]
    return plots.profile_figure(labels, rho, taus, scores, time_name, workloads, done,
                                "each point: the median time of a group's seeds on a workload")

