"""The comparison both `nnopt compare` and `nnopt report` make: options, then the study.

    discover (read each run tolerantly) -> filter (--where) -> duplicates -> table (differing config
    keys, metrics, --group-by mean ± std, within each workload) -> sort -> decide (--stats, --target,
    --baseline) -> the figures (`figure`, one per plot kind)

Both commands call `prepare` and get the same `Study`, so a report's table is the table
`nnopt compare --format json` prints for the same options.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnopt_cli.compare import decide, workload
from nnopt_cli.compare.discover import Run, discover, is_number
from nnopt_cli.compare.duplicates import drop_duplicates
from nnopt_cli.compare.evals import TIME_KEYS, Target
from nnopt_cli.compare.render import fmt
from nnopt_cli.compare.table import (
    CompareError,
    Table,
    build_table,
    check_names,
    config_keys,
    default_metrics,
    differing_keys,
    filter_runs,
    metric_names,
    parse_sort,
    parse_where,
)


class NoRuns(CompareError):
    exit_code = 1


# plot kinds and tradeoff x axes (plots.py imports matplotlib, which costs a second: only when plotting)
PLOT_KINDS = ("curves", "schedule", "tradeoff", "lr", "target", "profile", "diag",
              "diag-heatmap")  # diag*: diag_plots.py
TRADEOFF_X = ("size", "size_zip", "size_sparse", "latency", "params", "nonzeros", "bits", "flops")


def split_list(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def add_options(p: argparse.ArgumentParser) -> None:
    """The options that choose and decide a comparison (everything but the output)."""
    p.add_argument("paths", nargs="*", type=Path, default=[Path("outputs")],
                   help="folders to search for runs, recursively (default: outputs)")
    p.add_argument("--sort", metavar="NAME[:asc|:desc]",
                   help="sort by a metric (best first: largest, or smallest for loss/time/size/...) or a config key")
    p.add_argument("--group-by", action="append", metavar="KEYS",
                   help="config keys (comma list); runs with equal values are averaged (mean ± sample std)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs whose key equals value (repeatable; value may be a comma list: any of)")
    p.add_argument("--metric", action="append", metavar="NAMES",
                   help="metric columns to show (repeatable or comma list; default: final test/val metrics "
                        "and stage results)")
    d = p.add_argument_group("statistics (see docs/compare.md, 'Comparisons that decide')")
    d.add_argument("--stats", action="store_true",
                   help="with --group-by: each metric's interquartile mean with a 95%% bootstrap CI "
                        "(rliable)")
    d.add_argument("--target", action="append", metavar="[DATASET:]METRIC=VALUE",
                   help="time to a target (AlgoPerf): epochs, steps, samples and training seconds at the "
                        "first evaluation reaching it, per run or per group (median [95%% CI], runs that "
                        "reached it); e.g. val/acc=0.97, val/loss<=0.1, mnist1d:val/acc=0.6 (repeatable, "
                        "one per dataset)")
    d.add_argument("--target-time", choices=list(TIME_KEYS), default="steps",
                   help="the time the target plot and the performance profile use (default: steps)")
    d.add_argument("--baseline", metavar="GROUP",
                   help="with --group-by: each group against this one (its --group-by values, comma "
                        "separated) on the first --metric: P(better) [95%% CI], Mann-Whitney and permutation "
                        "p-values, and a verdict (better / worse / not resolved)")
    d.add_argument("--bootstrap", default=10_000, metavar="N",
                   help="bootstrap resamples (and random permutations) per interval (default: 10000)")
    d.add_argument("--stats-seed", default=0, metavar="S",
                   help="seed for the resampling: the same runs always give the same intervals (default: 0)")
    p.add_argument("--plot-metric", metavar="NAME",
                   help="per-epoch metric for --plot-kind curves (default: the first --metric logged per "
                        "epoch, else val/acc)")
    p.add_argument("--plot-x", choices=TRADEOFF_X, default="size",
                   help="x axis of --plot-kind tradeoff: size_bytes on disk, its zip / sparse-encoded size, "
                        "latency at the first batch size timed, ... (default: size)")


@dataclass
class Study:
    """What one comparison found: the runs, those shown, the table and what decides it."""

    runs: list[Run]
    shown: list[Run]
    table: Table
    group_by: list[str]        # the user's --group-by keys
    keys_grouped: list[str]    # those and the differing workload keys the table groups by too
    metrics: list[str]
    keys: list[str]            # every config key of the runs
    targets: list[Target] = field(default_factory=list)
    times: dict[int, dict] = field(default_factory=dict)  # id(run) -> time to target per unit


def short_names(keys: list[str]) -> dict[str, str]:
    """post.prune.sparsity -> sparsity for legends, unless two keys would read the same."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)}


def series_label(run: Run, keys: list[str]) -> str:
    names = short_names(keys)
    parts = [f"{names[k]}={fmt(run.config.get(k))}" for k in keys if k in run.config]
    label = " ".join(parts) or run.label
    return label if run.completed else f"{label} [{run.status}]"


def inside_run(path: Path, runs: list[Run]) -> Run | None:
    target = path.resolve()
    for r in runs:
        if target.is_relative_to(r.path.resolve()):
            return r
    return None


# resamples per interval: 10**6 already takes minutes and gigabytes on a few hundred runs
MAX_BOOTSTRAP = 1_000_000
MAX_SEED = 2**63 - 1  # numpy's generators take any non-negative integer; a flag's needs no more


def whole_number(flag: str, value: object, lo: int, hi: int) -> int:
    """A flag's integer value within [lo, hi], or one line saying what is allowed."""
    try:
        n = int(str(value), 10)
    except ValueError:
        try:  # 1e4 is a whole number too
            f = float(str(value))
            n = int(f) if f.is_integer() else None
        except (ValueError, OverflowError):
            n = None
        if n is None:
            raise CompareError(f"{flag} {value!r}: a whole number from {lo} to {hi}") from None
    if not lo <= n <= hi:
        raise CompareError(f"{flag} {value}: a whole number from {lo} to {hi}")
    return n


def prepare(args: argparse.Namespace, prog: str = "nnopt compare",
            check_output=lambda runs, shown, metrics: None) -> Study:
    """Discover, filter, group and decide; every bad option is refused before anything is printed
    but the warnings. `check_output(runs, shown, metrics)` refuses a bad output path at that point."""
    args.bootstrap = whole_number("--bootstrap", args.bootstrap, 100, MAX_BOOTSTRAP)
    args.stats_seed = whole_number("--stats-seed", args.stats_seed, 0, MAX_SEED)
    for p in args.paths:
        if not p.exists():
            raise NoRuns(f"path {str(p)!r} does not exist")
    runs = discover(args.paths)
    where_txt = ", ".join(map(str, args.paths))
    if not runs:
        raise NoRuns(f"no runs found under {where_txt} (a run folder holds summary.json, metrics.jsonl "
                     "or .hydra/config.yaml, as `nnopt train` writes)")
    for r in runs:
        if r.problems:
            print(f"{prog}: warning: {r.label}: {'; '.join(r.problems)} (listed as {r.status}, "
                  "not averaged)", file=sys.stderr)

    keys, metrics_all = config_keys(runs), metric_names(runs)
    where = parse_where(args.where)
    check_names("--where", [k for k, _ in where], ["status", *keys, *metrics_all])
    group_by = split_list(args.group_by)
    check_names("--group-by", group_by, keys)
    metrics = split_list(args.metric)
    check_names("--metric", metrics, metrics_all)
    if args.sort:
        check_names("--sort", [parse_sort(args.sort)[0]],  # a grouped table has only its group keys
                    [*metrics_all, *group_by, *filter(workload.is_workload_key, keys), "runs"] if group_by
                    else [*metrics_all, *keys, "status", "run"])

    shown = filter_runs(runs, where)
    if not shown:
        raise NoRuns(f"none of the {len(runs)} runs under {where_txt} match "
                     + " and ".join(f"{k}={v}" for k, v in where))
    shown, duplicates = drop_duplicates(shown)  # before anything counts them
    for d in duplicates:
        print(f"{prog}: warning: {d.warning()}", file=sys.stderr)
    wkeys = workload.columns(shown, group_by or ())
    keys_grouped = [*(k for k in wkeys if k not in group_by), *group_by] if group_by else []
    metrics = metrics or default_metrics(shown)
    if args.sort and parse_sort(args.sort)[0] not in metrics and parse_sort(args.sort)[0] in metrics_all:
        metrics.append(parse_sort(args.sort)[0])  # sorting by a metric shows it
    targets = decide.check(args, shown, group_by, keys, wkeys)
    check_output(runs, shown, metrics)  # before any output
    table = build_table(shown, metrics, keys_grouped, args.sort)
    added = [k for k in keys_grouped if k not in group_by]
    if added:
        table.notes.insert(0, "groups are formed within each workload (dataset, model, their settings, epochs): "
                              f"{', '.join(added)} added to --group-by, as the runs differ in "
                              f"{'it' if len(added) == 1 else 'them'} (never averaged across workloads)")
    times = decide.columns(args, table, group_by, metrics, targets, wkeys)  # may refuse: before any output
    if group_by:
        skipped = [r for r in shown if not r.completed]
        if skipped:
            names = ", ".join(f"{r.label} ({r.status})" for r in skipped[:5])
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            print(f"{prog}: warning: {len(skipped)} run(s) not completed are left out of the "
                  f"averages: {names}{more}", file=sys.stderr)
    return Study(runs, shown, table, group_by, keys_grouped, metrics, keys, targets, times)


def check_plot(args, kind: str, runs: list[Run], shown: list[Run], metrics: list[str]) -> str | None:
    """Refuse a plot kind that cannot be drawn from these runs; returns the metric it plots."""
    if kind == "tradeoff" and not any(r.stages for r in shown if r.completed):
        raise NoRuns("--plot-kind tradeoff needs completed runs with post-training stages (summary.json "
                     "'stages'); none of the runs shown has any")
    if kind == "lr":
        metric = args.plot_metric or (metrics[0] if metrics else "test/acc")
        check_names("--plot-metric", [metric], metric_names(shown))
        return metric
    if kind.startswith("diag"):
        from nnopt_cli.compare import diag_plots

        return diag_plots.check(shown, args.plot_metric)
    if kind != "curves":
        return None
    # numbers only: a row's per-class accuracies (val/class_acc) are a mapping, not a curve
    epoch_metrics = sorted({k for r in shown for row in r.epochs for k, v in row.items()
                            if k not in ("epoch", "stage") and (is_number(v) or v is None)})
    fallback = "val/acc" if "val/acc" in epoch_metrics or "val/loss" not in epoch_metrics else "val/loss"
    metric = args.plot_metric or next((m for m in metrics if m in epoch_metrics), fallback)
    check_names("--plot-metric", [metric], epoch_metrics)
    return metric


def figure(args, kind: str, study: Study, metric: str | None) -> Any:
    """The matplotlib Figure of one plot kind (metric: what check_plot returned)."""
    from nnopt_cli.compare import plots

    shown, table, group_by = study.shown, study.table, study.keys_grouped
    if kind in ("lr", "target", "profile"):
        from nnopt_cli.compare import decide_plots

        return decide_plots.figure(argparse.Namespace(**{**vars(args), "plot_kind": kind}), shown, table,
                                   group_by, metric, study.times, study.targets)
    if kind == "tradeoff":
        done = [r for r in shown if r.completed]
        diff = differing_keys(done)
        return plots.tradeoff_figure(done, args.plot_x, labels={r.label: series_label(r, diff) for r in done},
                                     workloads=workload.columns(done))
    if group_by:
        groups: dict[tuple, list[Run]] = {}
        for r in shown:
            if r.completed:  # groups average completed runs only, as in the table
                groups.setdefault(tuple(fmt(r.config.get(k)) for k in group_by), []).append(r)
        order = {tuple(fmt(row.get(k)) for k in group_by): i for i, row in enumerate(table.rows)}
        series = [plots.Series(" ".join(f"{k}={v}" for k, v in zip(group_by, key, strict=True)), members)
                  for key, members in sorted(groups.items(), key=lambda kv: order.get(kv[0], 0))]
    else:
        diff = differing_keys(shown)
        by_label = {r.label: r for r in shown}
        series = [plots.Series(series_label(by_label[row["run"]], diff), [by_label[row["run"]]])
                  for row in table.rows]
    if kind == "schedule":
        return plots.schedule_figure(series)
    if kind.startswith("diag"):
        from nnopt_cli.compare import diag_plots

        return diag_plots.figure(kind, series, metric)
    return plots.curves_figure(series, metric)
