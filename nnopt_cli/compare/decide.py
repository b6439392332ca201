"""The columns that decide a comparison: `--stats`, `--target`, `--baseline`, and the budget warning.

    build_table (mean ± std per group) -> add_stats (IQM [95% CI]) -> add_target (steps/samples/
    seconds to a target per run, or median [95% CI] and how many reached it per group)
    -> add_baseline (P(better than the baseline) [95% CI], Mann-Whitney and permutation p-values,
    a verdict that says "not resolved" when the seeds cannot tell the two apart, and then how many
    seeds per group would)

Groups average completed runs, as the plain table does; for time to target a diverged run also
counts, as one that never reached the target. Every row lies within one workload (workload.py: the
grouped table's keys include the workload keys that differ), and a group is compared only with the
baseline of its own workload. The formulas and their sources are in stats.py.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from nnopt_cli.compare import workload
from nnopt_cli.compare.discover import Run, finite
from nnopt_cli.compare.evals import TIME_KEYS, Target, eval_metrics, parse_target, target_for, time_to_target
from nnopt_cli.compare.render import DASH, fmt
from nnopt_cli.compare.table import (
    MEMBERS,
    Column,
    CompareError,
    Interval,
    Table,
    check_names,
    descending_by_default,
)
from nnopt_cli.store.layout import Status

ALPHA = 0.05  # a difference is "resolved" when p < ALPHA and the CI of P(better) excludes 1/2


@dataclass
class Settings:
    reps: int = 10_000   # bootstrap resamples (and Monte-Carlo permutations)
    seed: int = 0        # seeds every resampling: the same runs always give the same intervals


def check(args, shown: list[Run], group_by: list[str], keys: list[str], wkeys: list[str]) -> list[Target]:
    """Refuse bad statistics options before anything is computed; returns the parsed targets."""
    for option, needs in (("--stats", args.stats), ("--baseline", args.baseline),
                          ("--plot-kind profile", args.plot and args.plot_kind == "profile")):
        if needs and not group_by:
            raise CompareError(f"{option} compares groups of runs: add --group-by KEYS "
                               "(e.g. --group-by optimizer)")
    if args.bootstrap < 100:
        raise CompareError(f"--bootstrap {args.bootstrap}: use at least 100 resamples (default 10000)")
    targets = [parse_target(t) for t in args.target or []]
    if targets:
        check_names("--target", [t.metric for t in targets], eval_metrics(shown))
    if args.plot and args.plot_kind in ("target", "profile") and not targets:
        raise CompareError(f"--plot-kind {args.plot_kind} needs a --target, e.g. --target val/acc=0.97")
    if args.plot and args.plot_kind == "lr" and "optimizer.lr" not in keys:
        raise CompareError("--plot-kind lr plots against optimizer.lr, which none of the runs has")
    if args.plot and args.plot_kind == "profile":
        found = {workload.of(r, wkeys) for r in shown if r.completed or r.status == Status.DIVERGED}
        if len(found) < 2:
            raise CompareError("--plot-kind profile ranks groups across workloads (dataset, model and their "
                               f"settings, epochs) and needs runs on at least 2; these are on {len(found)}: "
                               "use --plot-kind target for one workload")
    return targets


def columns(args, table, group_by: list[str], metrics: list[str], targets: list[Target],
            wkeys: list[str]) -> dict:
    """The --stats/--target/--baseline columns and the budget warning (scipy is imported only when a
    statistic is asked for: plain `nnopt compare` stays fast). group_by: the user's keys; the
    table's rows are grouped by the differing workload keys `wkeys` too."""
    keys = [*(k for k in wkeys if k not in group_by), *group_by]
    if group_by:
        warning = budget_warning(table, keys, wkeys)
        if warning:
            print(f"nnopt compare: warning: {warning}", file=sys.stderr)
    if not (args.stats or targets or args.baseline):
        return {}
    settings = Settings(args.bootstrap, args.stats_seed)
    base = find_baselines(table, group_by, wkeys, args.baseline) if args.baseline else None
    if base is not None and not metrics:
        raise CompareError("--baseline compares the first --metric; none is shown")
    if args.stats:
        add_stats(table, metrics, settings)
    times = add_target(table, targets, settings) if targets else {}
    if targets and args.plot and args.plot_kind in ("target", "profile") and not any(
            t.get(args.target_time) is not None for t in times.values()):
        raise CompareError(f"--target-time {args.target_time}: none of the runs recorded it; try "
                           "--target-time epochs (runs written before the step counters existed)")
    if base is not None:
        name = group_name(next(iter(base.values())), group_by)
        add_baseline(table, base, metrics[0], name, wkeys, settings)
    return times


def group_name(row: dict, group_by: list[str]) -> str:
    return " ".join(f"{k}={fmt(row.get(k))}" for k in group_by)


def row_workload(row: dict, wkeys: list[str]) -> tuple:
    """The workload of a table row (all of a grouped row's runs share it)."""
    return workload.of(row[MEMBERS][0], wkeys) if row[MEMBERS] else ()


def baseline_values(row: dict, group_by: list[str]) -> list[str]:
    """A group's values as --baseline spells them: an unset key (init_from with no parent) is `null`."""
    return ["null" if row.get(k) is None else fmt(row.get(k)) for k in group_by]


def find_baselines(table: Table, group_by: list[str], wkeys: list[str], wanted: str) -> dict[tuple, dict]:
    """The grouped rows named by --baseline, one per workload that has it: its group values, comma
    separated in --group-by order (`adam`, or `adam,cosine` for --group-by optimizer,scheduler), or
    as `optimizer=adam ...`."""
    parts = [p.strip() for p in wanted.split(",")]
    found: dict[tuple, dict] = {}
    for row in table.rows:
        if parts == baseline_values(row, group_by) or wanted.strip() == group_name(row, group_by):
            found.setdefault(row_workload(row, wkeys), row)
    if found:
        return found
    valid = ", ".join(dict.fromkeys(",".join(baseline_values(row, group_by)) for row in table.rows))
    raise CompareError(f"--baseline {wanted!r} is not one of the groups; valid: {valid}")


def _done_values(row: dict, metric: str) -> list[float]:
    """The metric over the group's completed runs."""
    return [float(v) for r in row[MEMBERS] if r.completed and finite(v := r.metrics().get(metric))]


def _insert(table: Table, after: str | None, cols: list[Column]) -> None:
    keys = [c.key for c in table.columns]
    at = keys.index(after) + 1 if after in keys else len(keys)
    table.columns[at:at] = cols


def add_stats(table: Table, metrics: list[str], s: Settings) -> None:
    """Beside each metric's mean ± std: the IQM of the group's completed runs with a 95% percentile
    bootstrap CI (rliable)."""
    from nnopt_cli.compare import stats

    for m in metrics:
        key = f"{m}_iqm"
        for row in table.rows:
            xs = _done_values(row, m)
            ci = stats.bootstrap_ci(xs, "iqm", s.reps, s.seed) if xs else None
            row[key] = Interval(stats.iqm(xs), *ci) if xs else None
        _insert(table, m, [Column(key, "interval")])
    table.notes.append(f"<metric>_iqm: interquartile mean [95% percentile bootstrap CI, {s.reps} resamples, "
                       f"seed {s.seed}] over the completed runs (rliable, Agarwal et al. 2021)")


def add_target(table: Table, targets: list[Target], s: Settings) -> dict[int, dict]:
    """Time to target per run (per-run table) or per group (median [95% CI] and 'reached k/n').
    Returns each run's times, by id(run), for the plots."""
    times: dict[int, dict] = {}
    for row in table.rows:
        for r in row[MEMBERS]:
            t = target_for(r, targets)
            times[id(r)] = time_to_target(r, t) if t is not None else {}
    shown = [n for n in TIME_KEYS if any(times[id(r)].get(n) is not None for row in table.rows
                                          for r in row[MEMBERS])]
    keys = [f"target_{n}" for n in shown]
    if table.grouped:
        from nnopt_cli.compare import stats

        for row in table.rows:
            counted = [r for r in row[MEMBERS] if r.completed or r.status == Status.DIVERGED]
            hits = [r for r in counted if _reached(times[id(r)])]
            row["target_reached"] = f"{len(hits)}/{len(counted)}" if counted else None
            for n, key in zip(shown, keys, strict=True):
                xs = [times[id(r)][n] for r in counted if times[id(r)].get(n) is not None]
                ci = stats.bootstrap_ci(xs, "median", s.reps, s.seed) if xs else None
                row[key] = Interval(_median(xs), *ci) if xs else None
        _insert(table, None, [Column("target_reached", "text"), *(Column(k, "interval") for k in keys)])
        table.notes.append("target_*: median time to target [95% percentile bootstrap CI] over the completed "
                           "and diverged runs; a run that never reached it (or diverged) counts as inf")
    else:
        for row in table.rows:
            (r,) = row[MEMBERS]
            t = times[id(r)]
            reached = _reached(t)
            row["target_reached"] = ("diverged" if r.status == Status.DIVERGED else "yes" if reached
                                     else DASH if not t else "never")
            for n, key in zip(shown, keys, strict=True):
                row[key] = t.get(n) if reached else None
        at = "status" if any(c.key == "status" for c in table.columns) else None
        cols = [Column("target_reached", "verdict"), *(Column(k, "metric") for k in keys)]
        status_at = [c.key for c in table.columns].index(at) if at else len(table.columns)
        table.columns[status_at:status_at] = cols
    table.notes.append("target: " + "; ".join(t.text() for t in targets) + " (AlgoPerf: the first evaluation "
                       "that reaches it, in epochs, optimizer steps, training samples and training seconds)")
    return times


def _reached(t: dict[str, float | None]) -> bool:
    """Reached in any recorded unit (a run without the samples counter still reached it in steps)."""
    return any(v is not None and math.isfinite(v) for v in t.values())


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    n = len(ys)
    return ys[n // 2] if n % 2 else (ys[n // 2 - 1] + ys[n // 2]) / 2  # inf + inf stays inf


def add_baseline(table: Table, bases: dict[tuple, dict], metric: str, baseline_name: str, wkeys: list[str],
                 s: Settings) -> None:
    """Against the baseline group of the row's workload on `metric` (completed runs): P(a run of this
    group is better than a run of the baseline) with a bootstrap CI, the two-sided Mann-Whitney
    p-value and a permutation p-value on the difference of means, a verdict, and for a difference
    not resolved, the seeds per group that would resolve it."""
    from nnopt_cli.compare import stats

    higher = descending_by_default(metric, True)
    sign = 1.0 if higher else -1.0
    for row in table.rows:
        base = bases.get(row_workload(row, wkeys))
        x = [sign * v for v in _done_values(row, metric)]
        y = [sign * v for v in _done_values(base, metric)] if base is not None else []
        verdict = ("baseline" if row is base else "other workload" if base is None
                   else "no runs" if not x or not y else None)
        if verdict:  # runs on different workloads are not draws of one distribution
            row.update({"P(better)": None, "p_mw": None, "p_perm": None, "verdict": verdict, SEEDS: None})
            continue
        p_better = stats.prob_improvement(x, y)
        lo, hi = stats.prob_improvement_ci(x, y, s.reps, s.seed)
        p_mw = stats.mannwhitney_p(x, y)
        row["P(better)"] = Interval(p_better, lo, hi)
        row["p_mw"] = p_mw
        row["p_perm"] = stats.permutation_p(x, y, s.reps, s.seed)
        row[SEEDS] = None
        if p_mw >= ALPHA or lo <= 0.5 <= hi:
            row["verdict"] = "not resolved"
            row[SEEDS] = seeds_needed(x, y, p_better, s)
        else:
            row["verdict"] = "better" if p_better > 0.5 else "worse"
    cols = [Column("P(better)", "interval"), Column("p_mw", "metric"), Column("p_perm", "metric"),
            Column("verdict", "verdict")]
    if any(row.get(SEEDS) is not None for row in table.rows):
        cols.append(Column(SEEDS, "text"))
    _insert(table, None, cols)
    direction = "higher" if higher else "lower"
    counts = ", ".join(map(str, stats.SEED_COUNTS))
    table.notes.append(
        f"P(better): chance that a run of the group has a {direction} {metric} than a run of {baseline_name} "
        f"(Mann-Whitney U / (n m), ties 1/2; rliable) [95% bootstrap CI]; p_mw: two-sided Mann-Whitney "
        f"test; p_perm: two-sided permutation test on the difference of means; verdict 'not resolved': "
        f"p_mw >= {ALPHA} or the CI of P(better) contains 0.5, i.e. these seeds cannot tell the two apart; "
        f"'other workload': no {baseline_name} runs on this row's workload (groups are compared only within "
        "one)")
    if SEEDS in (c.key for c in table.columns):
        table.notes.append(
            f"{SEEDS}: for a difference not resolved, the fewest seeds per group (of {counts}) at which the "
            f"Mann-Whitney test at {ALPHA} rejects in >= {stats.POWER:.0%} of {s.reps} resamples drawn from each "
            f"group's runs (bootstrap, seed {s.seed}): more seeds at the observed difference and spread")


SEEDS = "seeds to resolve"
# |P(better) - 1/2| below this, with no seed count enough: the groups barely differ at all
NO_DIFFERENCE = 0.05


def seeds_needed(x: list[float], y: list[float], p_better: float, s: Settings) -> str:
    from nnopt_cli.compare import stats

    n, _ = stats.seeds_to_resolve(x, y, s.reps, s.seed, ALPHA)
    if n is not None:
        return str(n)
    if abs(p_better - 0.5) < NO_DIFFERENCE:
        return "difference ~0: more seeds will not resolve it"
    return f"more than {stats.SEED_COUNTS[-1]}"


def budget_warning(table: Table, keys: list[str], wkeys: list[str]) -> str | None:
    """A line when the compared groups' completed runs on one workload ran different numbers of
    optimizer steps (equal epochs at different batch sizes); runs that stopped early are not counted.
    Different epochs are different workloads (workload.py), in separate rows already."""
    per_workload: dict[tuple, dict[str, list]] = {}
    for row in table.rows:
        vals = sorted({v for r in row[MEMBERS] if r.completed and (v := _total_steps(r)) is not None})
        if vals:
            name = group_name(row, keys) if table.grouped else row.get("run")
            per_workload.setdefault(row_workload(row, wkeys), {})[name] = vals
    parts = []
    for per_group in per_workload.values():
        if len({v for vals in per_group.values() for v in vals}) > 1:
            first = list(per_group.items())[:6]
            shown = ", ".join(f"{g} {'/'.join(fmt(v) for v in vals)}" for g, vals in first)
            more = f" and {len(per_group) - 6} more" if len(per_group) > 6 else ""
            parts.append(f"{shown}{more}")
    if not parts:
        return None
    return ("the compared runs ran different budgets (total_steps: " + "; ".join(parts) + "): compare at the "
            "end of equal budgets (Wen et al. 2025), or by time to a target with --target")


def _total_steps(r: Run) -> float | None:
    if not r.epochs or r.config.get("epochs") != r.epochs[-1].get("epoch"):
        return None  # stopped early: its budget was the same, it just did not use all of it
    v = r.epochs[-1].get("total_steps")
    return v if finite(v) else None


def profile_times(runs: list[Run], group_by: list[str], times: dict[int, dict], time_name: str):
    """(submission labels, workload labels, times[s, w]) for a performance profile: a submission
    is a group (its --group-by values other than workload keys), and its time on a workload (the
    runs' differing workload keys) is the median over its completed and diverged runs there
    (AlgoPerf self-tuning ruleset: the median over the runs; a run that never reached the target
    counts as inf; a workload the submission has no run on also counts as inf). The ratios then
    take each workload's best within that workload."""
    wkeys = workload.columns([r for r in runs if r.completed or r.status == Status.DIVERGED], group_by)
    keys = [k for k in group_by if k not in wkeys]
    cells: dict[tuple, dict[tuple, list[float]]] = {}
    workloads: dict[tuple, str] = {}
    for r in runs:
        if not (r.completed or r.status == Status.DIVERGED):
            continue
        t = times.get(id(r), {}).get(time_name)
        if t is None:
            continue
        w = workload.of(r, wkeys)
        workloads.setdefault(w, workload.label(r, wkeys))
        cells.setdefault(tuple(fmt(r.config.get(k)) for k in keys), {}).setdefault(w, []).append(t)
    subs = list(cells)
    wl = list(workloads)
    matrix = [[_median(cells[s][w]) if w in cells[s] else math.inf for w in wl] for s in subs]
    labels = [" ".join(f"{k}={v}" for k, v in zip(keys, s, strict=True)) or "all runs" for s in subs]
    return labels, [workloads[w] for w in wl], matrix
