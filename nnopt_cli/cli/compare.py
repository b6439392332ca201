"""`nnopt compare`: one table (and plots) over the run folders below some paths.

    discover (read each run tolerantly) -> filter (--where) -> table (differing config keys,
    metrics, --group-by mean ± std) -> sort -> decide (--stats IQM [CI], --target time to target,
    --baseline P(better) and p-values; decide.py) -> render (table/csv/markdown/json) -> plot

Reads only what `nnopt train` writes (.hydra/, metrics.jsonl, summary.json) and never writes
inside a run folder.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from nnopt_cli.compare import decide, workload
from nnopt_cli.compare.discover import Run, discover
from nnopt_cli.compare.duplicates import drop_duplicates
from nnopt_cli.compare.evals import TIME_KEYS, Target
from nnopt_cli.compare.render import FORMATS, fmt, render
from nnopt_cli.compare.table import (
    CompareError,
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
from nnopt_cli.errors import report_errors
from nnopt_cli.store import outputs

EXAMPLES = """examples:
  nnopt compare outputs/                                  every run below outputs/
  nnopt compare outputs/multirun/2026-11-23/10-00-00 --sort test/acc
  nnopt compare outputs/ --group-by optimizer,scheduler   mean ± sample std over seeds and the rest
  nnopt compare outputs/ --where optimizer=adam --metric val/acc,test/acc
  nnopt compare outputs/ --format csv > runs.csv          also markdown and json
  nnopt compare outputs/ --group-by optimizer --plot curves.png --plot-metric val/loss
  nnopt compare outputs/ --plot schedules.png --plot-kind schedule
  nnopt compare outputs/ --plot tradeoff.png --plot-kind tradeoff --plot-x latency
  nnopt compare outputs/ --group-by optimizer --stats --metric test/acc   IQM with a 95% bootstrap CI
  nnopt compare outputs/ --group-by optimizer --target val/acc=0.97       steps/samples/seconds to target
  nnopt compare outputs/ --group-by optimizer --baseline adam --metric test/acc   better, worse, not resolved
  nnopt compare outputs/ --plot lr.png --plot-kind lr --metric val/acc     final metric vs optimizer.lr
  nnopt compare outputs/ --group-by optimizer --target val/acc=0.97 --plot p.png --plot-kind profile

Runs that are incomplete, failed, diverged or have corrupt files are listed with their status
(and a warning line) but never averaged. A run found twice (same config and seed in two folders)
counts once: the most recent is kept, with a warning line per duplicate set. --group-by groups
within each workload (dataset, model and their settings, epochs): the workload keys that differ
are added to the groups, so runs on different workloads are never averaged or compared together. Names for --sort/--where/--group-by are config keys
(optimizer, optimizer.lr, seed, ...), metrics (test/acc, val/loss, <stage>/size_bytes, ...)
and status.
"""


class NoRuns(CompareError):
    exit_code = 1


def _list(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


# plot kinds and tradeoff x axes (plots.py imports matplotlib, which costs a second: only when plotting)
PLOT_KINDS = ("curves", "schedule", "tradeoff", "lr", "target", "profile", "diag",
              "diag-heatmap")  # diag*: diag_plots.py
TRADEOFF_X = ("size", "size_zip", "size_sparse", "latency", "params", "nonzeros", "bits", "flops")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnopt compare", description="Compare run folders: one row per run (or per group), "
        "the config keys that differ, final metrics and post-training stage results.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
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
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="also save a plot as PNG")
    p.add_argument("--plot-kind", choices=PLOT_KINDS, default="curves",
                   help="curves: a metric per epoch; schedule: lr and batch size per epoch; "
                        "tradeoff: accuracy vs size/latency after post-training stages; lr: final metric vs "
                        "optimizer.lr per optimizer; target: time to --target per group with CI whiskers; "
                        "profile: AlgoPerf performance profile over workloads (dataset x model) with scores; "
                        "diag, diag-heatmap: a per-layer diagnostic (--plot-metric, default grad_norm) per step "
                        "(default: curves)")
    p.add_argument("--plot-metric", metavar="NAME",
                   help="per-epoch metric for --plot-kind curves (default: the first --metric logged per "
                        "epoch, else val/acc)")
    p.add_argument("--plot-x", choices=TRADEOFF_X, default="size",
                   help="x axis of --plot-kind tradeoff: size_bytes on disk, its zip / sparse-encoded size, "
                        "latency at the first batch size timed, ... (default: size)")
    return p


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


def compare(args: argparse.Namespace) -> None:
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
            print(f"nnopt compare: warning: {r.label}: {'; '.join(r.problems)} (listed as {r.status}, "
                  "not averaged)", file=sys.stderr)

    keys, metrics_all = config_keys(runs), metric_names(runs)
    where = parse_where(args.where)
    check_names("--where", [k for k, _ in where], ["status", *keys, *metrics_all])
    group_by = _list(args.group_by)
    check_names("--group-by", group_by, keys)
    metrics = _list(args.metric)
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
        print(f"nnopt compare: warning: {d.warning()}", file=sys.stderr)
    wkeys = workload.columns(shown)
    keys_grouped = [*(k for k in wkeys if k not in group_by), *group_by] if group_by else []
    metrics = metrics or default_metrics(shown)
    if args.sort and parse_sort(args.sort)[0] not in metrics and parse_sort(args.sort)[0] in metrics_all:
        metrics.append(parse_sort(args.sort)[0])  # sorting by a metric shows it
    targets = decide.check(args, shown, group_by, keys, wkeys)
    plot_metric = check_plot(args, runs, shown, metrics) if args.plot else None  # before any output
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
            print(f"nnopt compare: warning: {len(skipped)} run(s) not completed are left out of the "
                  f"averages: {names}{more}", file=sys.stderr)
    if sys.stdout.isatty():
        render(table, args.format)
    else:  # a file or a pipe: every byte checked, so a full disk is an error, not a cut table
        text = io.StringIO()
        render(table, args.format, text)
        outputs.write_stdout(text.getvalue())

    if args.plot:
        make_plot(args, shown, table, keys_grouped, plot_metric, times, targets)


def check_plot(args, runs: list[Run], shown: list[Run], metrics: list[str]) -> str | None:
    """Refuse a bad --plot before the table is printed; returns the curves' metric."""
    if args.plot.suffix.lower() != ".png":
        raise CompareError(f"--plot {str(args.plot)!r}: plots are written as PNG; name the file *.png")
    owner = inside_run(args.plot, runs)
    if owner is not None:
        raise CompareError(f"--plot {str(args.plot)!r} is inside run folder {owner.label}; compare never "
                           "writes into run folders, choose another path")
    if args.plot_kind == "tradeoff" and not any(r.stages for r in shown if r.completed):
        raise NoRuns("--plot-kind tradeoff needs completed runs with post-training stages (summary.json "
                     "'stages'); none of the runs shown has any")
    if args.plot_kind == "lr":
        metric = args.plot_metric or (metrics[0] if metrics else "test/acc")
        check_names("--plot-metric", [metric], metric_names(shown))
        return metric
    if args.plot_kind.startswith("diag"):
        from nnopt_cli.compare import diag_plots

        return diag_plots.check(shown, args.plot_metric)
    if args.plot_kind != "curves":
        return None
    epoch_metrics = sorted({k for r in shown for row in r.epochs for k in row if k not in ("epoch", "stage")})
    metric = args.plot_metric or next((m for m in metrics if m in epoch_metrics), "val/acc")
    check_names("--plot-metric", [metric], epoch_metrics)
    return metric


def make_plot(args, shown: list[Run], table, group_by: list[str], metric: str | None,
              times: dict | None = None, targets: list[Target] | None = None) -> None:
    from nnopt_cli.compare import plots

    if args.plot_kind in ("lr", "target", "profile"):
        from nnopt_cli.compare import decide_plots

        fig = decide_plots.figure(args, shown, table, group_by, metric, times or {}, targets or [])
    elif args.plot_kind == "tradeoff":
        done = [r for r in shown if r.completed]
        diff = differing_keys(done)
        fig = plots.tradeoff_figure(done, args.plot_x, labels={r.label: series_label(r, diff) for r in done},
                                    workloads=workload.columns(done))
    else:
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
        if args.plot_kind == "schedule":
            fig = plots.schedule_figure(series)
        elif args.plot_kind.startswith("diag"):
            from nnopt_cli.compare import diag_plots

            fig = diag_plots.figure(args.plot_kind, series, metric)
        else:
            fig = plots.curves_figure(series, metric)
    plots.save(fig, args.plot)
    print(f"nnopt compare: wrote {args.plot}", file=sys.stderr)


def run(argv: list[str]) -> None:
    """Entry point for `nnopt compare ...`: errors are one line and a non-zero exit."""
    args = parser().parse_args(argv)
    report_errors("compare", compare, args)
