"""`nnopt tune-lr`: the DeepOBS learning-rate tuning protocol (Schneider et al. 2019) in one command.

    for each optimizer: a log-spaced LR grid (centred on its preset's default LR) x --grid-seeds
      -> best LR by the final validation metric (mean over the grid seeds)
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
import hashlib
import json
import math
import sys
from pathlib import Path

from nnopt_cli.config.overrides import check_keys, check_overrides
from nnopt_cli.errors import NnoptError, want_traceback
from nnopt_cli.tune.lr_jobs import STUDY_FILE, Study, final_metric, stats  # noqa: F401 - part of this module's API

METRICS = {"val/acc": "max", "val/loss": "min"}  # the final validation metric that picks the LR
DEFAULT_OPTIMIZERS = "sgd,momentum,adam,adamw,rmsprop"
# set by the protocol itself, or meaningless for it: refused as overrides
RESERVED = ("optimizer", "optimizer.lr", "seed", "resume", "skip_completed")

EXAMPLES = """examples:
  nnopt tune-lr dataset=mnist1d model=mlp epochs=20 --optimizers sgd,momentum,adam,adamw,rmsprop --lrs 8 --seeds 3
  nnopt tune-lr dataset=mnist1d model=cnn1d --lr-range 1e-4,1 --lrs 9 --dir outputs/tune_cnn1d
  nnopt compare outputs/tune_cnn1d --group-by optimizer,optimizer.lr     every run of the study

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
    p.add_argument("--metric", choices=tuple(METRICS), default="val/acc",
                   help="final validation metric that picks the LR (default: val/acc)")
    p.add_argument("--dir", type=Path, metavar="PATH",
                   help="study folder (default: outputs/tune_lr/<hash of the arguments>)")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    a = parser().parse_intermixed_args(argv)
    a.optimizers = [o.strip() for o in a.optimizers.split(",") if o.strip()]
    if not a.optimizers or len(set(a.optimizers)) != len(a.optimizers):
        raise TuneError(f"tune-lr: --optimizers {','.join(a.optimizers)!r}: give distinct presets, comma separated")
    for name, lo in (("--lrs", 1), ("--seeds", 1), ("--grid-seeds", 1)):
        if getattr(a, name[2:].replace("-", "_")) < lo:
            raise TuneError(f"tune-lr: {name} must be >= {lo}")
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


def sig3(x: float) -> float:
    """An LR rounded to 3 significant digits: what the folder name and the config both say."""
    return float(f"{x:.3g}")


def lr_grid(default_lr: float, n: int, span: float, lr_range: tuple[float, float] | None) -> list[float]:
    lo, hi = lr_range or (default_lr / math.sqrt(span), default_lr * math.sqrt(span))
    if n == 1:
        return [sig3(math.sqrt(lo * hi))]
    return sorted({sig3(lo * (hi / lo) ** (i / (n - 1))) for i in range(n)})


def study_dir(a: argparse.Namespace) -> Path:
    if a.dir is not None:
        return a.dir
    spec = [a.overrides, a.optimizers, a.lrs, a.span, a.lr_range, a.seeds, a.grid_seeds, a.metric]
    return Path("outputs") / "tune_lr" / hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:10]


def pick_best(grid: list[dict], mode: str) -> float | None:
    """The grid LR with the best mean final metric (a diverged or failed run counts as the worst);
    on a tie the smaller LR. None when no grid run finished."""
    scored = [(g["metric"]["mean"], g["lr"]) for g in grid if g["metric"]["n"] == len(g["metric"]["values"])]
    if not scored:
        return None
    best = max(scored, key=lambda s: (s[0] if mode == "max" else -s[0], -s[1]))
    return best[1]


def fmt_stat(s: dict | None, digits: int = 4) -> str:
    if not s or s["mean"] is None:
        return "-"
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if s["n"] > 1 else "") + ("" if s["n"] == len(s["values"]) else "*")


def format_table(result: dict) -> str:
    metric = result["protocol"]["metric"]
    head = ["optimizer", "default lr", f"{metric} default", "test/acc default", "tuned lr", f"{metric} tuned",
            "test/acc tuned", "runs tuning/all"]
    rows = [head]
    for name, o in result["optimizers"].items():
        d, t = o["default"], o["tuned"]
        rows.append([name, f"{o['default_lr']:g}", fmt_stat(d[metric]), fmt_stat(d["test/acc"]),
                     f"{o['best_lr']:g}" if o["best_lr"] is not None else "none finished",
                     fmt_stat(t and t[metric]), fmt_stat(t and t["test/acc"]), f"{o['runs_tuning']}/{o['runs_all']}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n = result["protocol"]["seeds"]
    lines.append(f"mean ± sample std over {n} seed(s); * = some runs diverged or failed (not averaged)")
    return "\n".join(lines)


def run(argv: list[str]) -> None:
    try:
        a = parse(argv)

        check_overrides(a.overrides)
        check_keys(a.overrides)

        study = Study(study_dir(a), a.overrides, a.optimizers, a.metric)
        plans = study.plan(lambda default: lr_grid(default, a.lrs, a.span, a.lr_range))
    except NnoptError as e:
        print(f"nnopt: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    protocol = {"name": "DeepOBS LR tuning (Schneider et al. 2019)", "metric": a.metric, "mode": METRICS[a.metric],
                "lrs": a.lrs, "span": None if a.lr_range else a.span, "lr_range": a.lr_range, "seeds": a.seeds,
                "grid_seeds": a.grid_seeds, "overrides": a.overrides,
                "command": "nnopt tune-lr " + " ".join(argv)}
    print(f"nnopt tune-lr: study {study.root}", flush=True)
    try:
        result = study.run(plans, protocol, pick_best)
    except KeyboardInterrupt:
        print(f"nnopt: interrupted; rerun the same command to finish the study in {study.root}", file=sys.stderr)
        raise SystemExit(130) from None
    except NnoptError as e:
        if want_traceback():
            raise
        print(f"nnopt: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    print(format_table(result))
    j = result["jobs"]
    print(f"{j['run']} run(s) trained, {j['skipped']} skipped as done, {j['failed']} failed; "
          f"{result['wall_s']:.1f} s wall, {j['overhead_per_job_s']:.3f} s per trained run beyond its training; "
          f"summary: {study.root / STUDY_FILE}")
    if j["failed"]:
        raise SystemExit(1)
