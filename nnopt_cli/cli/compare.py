"""`nnopt compare`: one table (and plots) over the run folders below some paths.

    discover (read each run tolerantly) -> filter (--where) -> table (differing config keys,
    metrics, --group-by mean ± std) -> sort -> decide (--stats IQM [CI], --target time to target,
    --baseline P(better) and p-values; decide.py) -> render (table/csv/markdown/json) -> plot

The steps up to the plot are compare/pipeline.py's, which `nnopt report` shares.

Reads only what `nnopt train` writes (.hydra/, metrics.jsonl, summary.json) and never writes
inside a run folder.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from nnopt_cli.compare import pareto, pipeline
from nnopt_cli.compare.pipeline import PLOT_KINDS
from nnopt_cli.compare.render import FORMATS, render
from nnopt_cli.compare.table import CompareError
from nnopt_cli.errors import report_errors
from nnopt_cli.store import layout, outputs

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
  nnopt compare outputs/tune/<study>                      a multi-objective study: its Pareto front too

Runs that are incomplete, failed, diverged or have corrupt files are listed with their status
(and a warning line) but never averaged. A run found twice (same config and seed in two folders)
counts once: the most recent is kept, with a warning line per duplicate set. --group-by groups
within each workload (dataset, model and their settings, epochs): the workload keys that differ
are added to the groups, so runs on different workloads are never averaged or compared together. Names for --sort/--where/--group-by are config keys
(optimizer, optimizer.lr, seed, ...), metrics (test/acc, val/loss, <stage>/size_bytes, ...)
and status.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnopt compare", description="Compare run folders: one row per run (or per group), "
        "the config keys that differ, final metrics and post-training stage results.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pipeline.add_options(p)
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="also save a plot as PNG")
    p.add_argument("--plot-kind", choices=PLOT_KINDS, default="curves",
                   help="curves: a metric per epoch; schedule: lr and batch size per epoch; "
                        "tradeoff: accuracy vs size/latency after post-training stages; lr: final metric vs "
                        "optimizer.lr per optimizer; target: time to --target per group with CI whiskers; "
                        "profile: AlgoPerf performance profile over workloads (dataset x model) with scores; "
                        "diag, diag-heatmap: a per-layer diagnostic (--plot-metric, default grad_norm) per step "
                        "(default: curves)")
    return p


def show_fronts(fronts: list[pareto.Front], fmt_name: str, file=None) -> None:
    """A study folder's Pareto front after the table (table and markdown formats; csv and json
    stay one document each, so the front is named on stderr instead)."""
    for front in fronts:
        if fmt_name in ("csv", "json"):
            print(f"nnopt compare: {front.title()}: see {front.folder / layout.PARETO} (shown with --format "
                  "table or markdown)", file=sys.stderr)
            continue
        out = file or sys.stdout
        out.write(f"\n{'## ' if fmt_name == 'markdown' else ''}{front.title()}\n")
        if fmt_name == "markdown":
            out.write("\n")
        out.flush()
        render(pareto.table(front), fmt_name, file)


def compare(args: argparse.Namespace) -> None:
    plot_metric: list[str | None] = [None]

    def check_plot(runs, shown, metrics) -> None:
        """Refuse a bad --plot before the table is printed."""
        if not args.plot:
            return
        if args.plot.suffix.lower() != ".png":
            raise CompareError(f"--plot {str(args.plot)!r}: plots are written as PNG; name the file *.png")
        owner = pipeline.inside_run(args.plot, runs)
        if owner is not None:
            raise CompareError(f"--plot {str(args.plot)!r} is inside run folder {owner.label}; compare never "
                               "writes into run folders, choose another path")
        plot_metric[0] = pipeline.check_plot(args, args.plot_kind, runs, shown, metrics)

    study = pipeline.prepare(args, check_output=check_plot)
    fronts, problems = pareto.find(args.paths, study.runs)
    for why in problems:
        print(f"nnopt compare: warning: {why}", file=sys.stderr)
    if sys.stdout.isatty():
        render(study.table, args.format)
        show_fronts(fronts, args.format)
    else:  # a file or a pipe: every byte checked, so a full disk is an error, not a cut table
        text = io.StringIO()
        render(study.table, args.format, text)
        show_fronts(fronts, args.format, text)
        outputs.write_stdout(text.getvalue())
    if args.plot:
        from nnopt_cli.compare import plots

        plots.save(pipeline.figure(args, args.plot_kind, study, plot_metric[0]), args.plot)
        print(f"nnopt compare: wrote {args.plot}", file=sys.stderr)


def run(argv: list[str]) -> None:
    """Entry point for `nnopt compare ...`: errors are one line and a non-zero exit."""
    args = parser().parse_args(argv)
    report_errors("compare", compare, args)
