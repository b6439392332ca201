"""`nnopt tune-lr`: the DeepOBS learning-rate tuning protocol (Schneider et al. 2019) in one command.

    for each optimizer: a log-spaced LR grid (centred on its preset's default LR) x --grid-seeds
      -> best LR by the final validation metric (mean over the grid seeds); a best LR on the edge
         of the grid is flagged (the optimum may lie outside), and --extend adds LRs beyond that
         edge at the grid's spacing until it is inside (at most --extend-max)
      -> that LR over --seeds seeds, beside the preset's default LR over the same seeds
    -> one table and <study>/tune_lr.json (with the runs the tuning spent per optimizer)

Every run is an ordinary run folder, <study>/<optimizer>/lr=<lr>/seed=<seed>, that `nnopt compare`
reads; a (optimizer, lr, seed) the protocol needs twice runs once. The jobs run in this process:
the config is composed once per optimizer and the dataset prepared once (data.keep_loaded hands
each job its own copy), so a job costs little beyond its training. Rerunning the same command
skips finished runs and resumes interrupted ones (sweep.job_action), as a sweep's skip_completed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from nnopt_cli.config.overrides import check_keys, check_overrides
from nnopt_cli.errors import NnoptError, want_traceback
from nnopt_cli.tune.lr_jobs import STUDY_FILE, LrGrid, Study, study_dir

METRICS = {"val/acc": "max", "val/loss": "min"}  # the final validation metric that picks the LR
DEFAULT_OPTIMIZERS = "sgd,momentum,adam,adamw,rmsprop"
# set by the protocol itself, or meaningless for it: refused as overrides
RESERVED = ("optimizer", "optimizer.lr", "seed", "resume", "skip_completed")

EXAMPLES = """examples:
  nnopt tune-lr dataset=mnist1d model=mlp epochs=20 --optimizers sgd,momentum,adam,adamw,rmsprop --lrs 8 --seeds 3
  nnopt tune-lr dataset=mnist1d model=cnn1d --lr-range 1e-4,1 --lrs 9 --dir outputs/tune_cnn1d
  nnopt compare outputs/tune_cnn1d --group-by optimizer,optimizer.lr     every run of the study
  nnopt tune-lr dataset=mnist1d model=mlp --vectorize      the grid's runs trained as one vectorized model
  nnopt tune-lr dataset=mnist1d model=cnn1d --lr-range 1e-4,1 --lrs 9 --dir outputs/tune_cnn1d --extend
                                 the same study, widened where a best LR sat on the grid's edge

The grid spans --span around each optimizer's default LR (100: default/10 .. default*10), or the
same --lr-range for all. Rerun the same command (or the same --dir) to finish an interrupted study:
finished runs are skipped, runs stopped by Ctrl-C / SIGTERM resume from their checkpoint (jobs save
one only then, checkpoint.every=0, unless you override it), runs killed otherwise start again.
"""


class TuneError(NnoptError):
    """A bad tune-lr argument: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message and exits 2; we want one line
        raise TuneError(f"tune-lr: {message} (see nnopt tune-lr --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nnopt tune-lr", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                description="Tune each optimizer's learning rate on a log grid, rerun the best over seeds "
                            "and show it beside the default LR (DeepOBS, Schneider et al. 2019).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="Hydra overrides applied to every run (dataset=mnist1d model=cnn1d epochs=20 ...)")
    p.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS, metavar="LIST",
                   help=f"optimizer presets, comma list (default: {DEFAULT_OPTIMIZERS})")
    p.add_argument("--lrs", type=int, default=8, metavar="N", help="learning rates in the grid (default: 8)")
    p.add_argument("--span", type=float, default=100.0, metavar="X",
                   help="ratio of the largest to the smallest grid LR, centred on each preset's default "
                        "(default: 100)")
    p.add_argument("--lr-range", metavar="LO,HI", help="one absolute grid for every optimizer (replaces --span)")
    p.add_argument("--seeds", type=int, default=3, metavar="N",
                   help="seeds for the tuned and the default LR (default: 3)")
    p.add_argument("--grid-seeds", type=int, default=1, metavar="N",
                   help="seeds per grid point; the LR is picked by their mean (default: 1)")
    p.add_argument("--extend", action="store_true",
                   help="while an optimizer's best LR is the smallest or largest tried, add one more LR "
                        "beyond that edge at the grid's spacing (up to --extend-max); runs already done "
                        "are reused")
    p.add_argument("--extend-max", type=int, default=None, metavar="N",
                   help="LRs --extend may add per optimizer (default: 4)")
    p.add_argument("--metric", choices=tuple(METRICS), default="val/acc",
                   help="final validation metric that picks the LR (default: val/acc)")
    p.add_argument("--vectorize", action="store_true",
                   help="train each optimizer's LR grid x seeds (then its tuned and default LR x seeds) as one "
                        "vectorized model: the same runs and folders, faster for small models "
                        "(docs/scaling.md)")
    p.add_argument("--dir", type=Path, metavar="PATH",
                   help="study folder (default: outputs/tune_lr/<hash of the arguments>)")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    a = parser().parse_intermixed_args(argv)
    a.optimizers = [o.strip() for o in a.optimizers.split(",") if o.strip()]
    if not a.optimizers or len(set(a.optimizers)) != len(a.optimizers):
        raise TuneError(f"tune-lr: --optimizers {','.join(a.optimizers)!r}: give distinct presets, comma separated")
    for name, lo in (("--lrs", 1), ("--seeds", 1), ("--grid-seeds", 1), ("--extend-max", 1)):
        value = getattr(a, name[2:].replace("-", "_"))
        if value is not None and value < lo:
            raise TuneError(f"tune-lr: {name} must be >= {lo}")
    if a.extend_max is not None and not a.extend:
        raise TuneError("tune-lr: --extend-max needs --extend")
    if a.extend and a.lrs < 2:
        raise TuneError("tune-lr: --extend needs --lrs >= 2 (a grid of one LR has no spacing to extend by)")
    a.extend_max = (4 if a.extend_max is None else a.extend_max) if a.extend else 0
    if not a.span > 1 or not math.isfinite(a.span):
        raise TuneError(f"tune-lr: --span {a.span}: must be a number > 1")
    if a.lr_range is not None:
        try:
            lo, hi = (float(v) for v in a.lr_range.split(","))
        except ValueError:
            raise TuneError(f"tune-lr: --lr-range {a.lr_range!r}: write two numbers LO,HI") from None
        if not 0 < lo < hi < math.inf:
            raise TuneError(f"tune-lr: --lr-range {a.lr_range!r}: needs 0 < LO < HI")
        a.lr_range = (lo, hi)
    for o in a.overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if "=" not in o or o.startswith("-"):
            raise TuneError(f"tune-lr: {o!r} is not an override KEY=VALUE (see nnopt tune-lr --help)")
        if key in RESERVED or key.startswith("hydra") or key == "optimizer._target_":
            raise TuneError(f"tune-lr: the override {o!r} is not allowed: tune-lr sets the optimizer, its LR "
                            "and the seed of each run (use --optimizers, --lrs/--span/--lr-range, --seeds)")
    return a


def fmt_stat(s: dict | None, digits: int = 4) -> str:
    if not s or s["mean"] is None:
        return "-"
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if s["n"] > 1 else "") + ("" if s["n"] == len(s["values"]) else "*")


EDGE_NOTE = {"low": "smallest tried", "high": "largest tried", "flat": "all tied"}


def tuned_lr_cell(o: dict) -> str:
    if o["best_lr"] is None:
        return "none finished"
    notes = (["added"] if o["best_lr"] in o["added_lrs"] else []) + (
        [EDGE_NOTE[o["edge"]]] if o["edge"] else [])
    return f"{o['best_lr']:g}" + (f" ({', '.join(notes)})" if notes else "")


def grid_cell(o: dict) -> str:
    lrs = [g["lr"] for g in o["grid"]]
    return f"{min(lrs):g}..{max(lrs):g}" + (f" (+{len(o['added_lrs'])})" if o["added_lrs"] else "")


def format_table(result: dict) -> str:
    metric = result["protocol"]["metric"]
    head = ["optimizer", "default lr", f"{metric} default", "test/acc default", "grid", "tuned lr",
            f"{metric} tuned", "test/acc tuned", "runs tuning/all"]
    rows = [head]
    for name, o in result["optimizers"].items():
        d, t = o["default"], o["tuned"]
        rows.append([name, f"{o['default_lr']:g}", fmt_stat(d[metric]), fmt_stat(d["test/acc"]), grid_cell(o),
                     tuned_lr_cell(o), fmt_stat(t and t[metric]), fmt_stat(t and t["test/acc"]),
                     f"{o['runs_tuning']}/{o['runs_all']}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n = result["protocol"]["seeds"]
    lines.append(f"mean ± sample std over {n} seed(s); * = some runs diverged or failed (not averaged)")
    optimizers = result["optimizers"].values()
    if any(o["added_lrs"] for o in optimizers):
        lines.append("grid: the LRs tried, (+N) of them added by --extend beyond the first grid; "
                     "(added) = the best LR is one of those")
    if any(o["edge"] in ("low", "high") for o in optimizers):
        lines.append("(smallest tried) / (largest tried) = the best LR is on the edge of the grid: "
                     "the optimum may lie beyond it")
    if any(o["edge"] == "flat" for o in optimizers):
        lines.append(f"(all tied) = every LR tried gave the same {metric}: the pick (the smallest) says nothing")
    return "\n".join(lines)


def edge_warnings(result: dict) -> list[str]:
    """One line per optimizer whose best LR is the smallest or largest it tried, or tied with all."""
    extend_max, metric = result["protocol"]["extend_max"], result["protocol"]["metric"]
    out = []
    for name, o in result["optimizers"].items():
        if o["edge"] == "flat":
            out.append(f"{name}: every LR tried ({grid_cell(o)}) gave the same {metric}, so the grid cannot tell "
                       "them apart; move or widen it (--lr-range, --span), train longer, or pick by --metric "
                       "val/loss")
        elif o["edge"]:
            word, more = EDGE_NOTE[o["edge"]], "smaller" if o["edge"] == "low" else "larger"
            advice = (f"--extend added {len(o['added_lrs'])} LR(s) (--extend-max {extend_max}): rerun with a "
                      "larger --extend-max" if extend_max else "rerun the same command with --extend to try "
                      f"{more} LRs (runs already done are reused)")
            out.append(f"{name}: the best LR {o['best_lr']:g} is the {word} ({grid_cell(o)}), so the optimum "
                       f"may be {more}; {advice}")
    return out


def run(argv: list[str]) -> None:
    try:
        a = parse(argv)

        check_overrides(a.overrides)
        check_keys(a.overrides)

        study = Study(study_dir(a), a.overrides, a.optimizers, a.metric, vectorize=a.vectorize)
        plans = study.plan(lambda default: LrGrid.around(default, a.lrs, a.span, a.lr_range))
    except NnoptError as e:
        print(f"nnopt: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    protocol = {"name": "DeepOBS LR tuning (Schneider et al. 2019)", "metric": a.metric, "mode": METRICS[a.metric],
                "lrs": a.lrs, "span": None if a.lr_range else a.span, "lr_range": a.lr_range, "seeds": a.seeds,
                "grid_seeds": a.grid_seeds, "extend_max": a.extend_max, "overrides": a.overrides,
                "command": "nnopt tune-lr " + " ".join(argv)}
    print(f"nnopt tune-lr: study {study.root}", flush=True)
    try:
        result = study.run(plans, protocol)
    except KeyboardInterrupt:
        print(f"nnopt: interrupted; rerun the same command to finish the study in {study.root}", file=sys.stderr)
        raise SystemExit(130) from None
    except NnoptError as e:
        if want_traceback():
            raise
        print(f"nnopt: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    print(format_table(result))
    for line in edge_warnings(result):
        print(f"nnopt: warning: {line}", file=sys.stderr)
    j = result["jobs"]
    print(f"{j['run']} run(s) trained, {j['skipped']} skipped as done, {j['failed']} failed; "
          f"{result['wall_s']:.1f} s wall, {j['overhead_per_job_s']:.3f} s per trained run beyond its training; "
          f"summary: {study.root / STUDY_FILE}")
    if j["failed"]:
        raise SystemExit(1)
