"""`nnopt lr-find`: the LR range test (Smith 2017, "Cyclical learning rates", as in fastai's lr_find).

Train a fresh copy of the configured model as `nnopt train` would (its optimizer, loss, precision,
clipping and penalty; one fixed batch size, shuffled passes over the training split) while the LR
grows exponentially from --start-lr to --end-lr over --steps steps, one batch per step.
The loss is smoothed with fastai's debiased moving average (beta 0.98) and the test stops once the
smoothed loss exceeds --stop-factor x its minimum (or is not finite). Two rules turn the curve into
an LR, both printed:

    min/10     the LR of the lowest smoothed loss, divided by 10 (the suggestion: well inside the
               range where the loss still falls, below where it blows up)
    steepest   the LR where the smoothed loss falls fastest per decade of LR, before its minimum

Writes lr_find.png, lr_find.csv and lr_find.json to --out (default outputs/lr_find/<time>/), never
into a run folder; nothing else is written and no run is changed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nnopt_cli.config.checks import need_int, need_num
from nnopt_cli.errors import NnoptError, report_errors
from nnopt_cli.run import tools as runs
from nnopt_cli.store import outputs
from nnopt_cli.training.device import configure_threads, resolve_device, seed_everything
from nnopt_cli.training.fit import fit
from nnopt_cli.training.metrics import Diverged
from nnopt_cli.training.observers import Observer, Observers, StepInfo, StopRun
from nnopt_cli.training.progress import Count
from nnopt_cli.training.trainer import Trainer

RULE = "min/10"


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = "end of the ramp"

    def suggestions(self) -> dict[str, float]:
        """{'min/10': lr, 'steepest': lr} over the curve without its first 10% and last 5 points
        (fastai trims them too: the start is noise, the end is the blow-up)."""
        n = len(self.smoothed)
        lo, hi = n // 10, n - 5 if n - 5 > n // 10 + 2 else n
        lrs, s = self.lrs[lo:hi], self.smoothed[lo:hi]
        if len(s) < 2:
            raise NnoptError(f"the range test recorded only {n} steps: start lower (--start-lr) or use more --steps")
        i_min = min(range(len(s)), key=s.__getitem__)
        logs = [math.log10(v) for v in lrs]
        slopes = [(s[i + 1] - s[i]) / (logs[i + 1] - logs[i]) for i in range(len(s) - 1)]
        before = slopes[:max(i_min, 1)]
        i_steep = min(range(len(before)), key=before.__getitem__)
        return {"min/10": lrs[i_min] / 10, "steepest": lrs[i_steep]}


class LRRamp(Observer):
    """The range test's per-step part, as an observer of fit(): sets the LR of every step on the
    exponential ramp, records the loss each step started from and ends the test (StopRun) at the end
    of the ramp or once the smoothed loss blows up."""

    def __init__(self, optimizer: torch.optim.Optimizer, start_lr: float, end_lr: float, steps: int,
                 beta: float = 0.98, stop_factor: float = 4.0, on_step=None):
        self.optimizer, self.start_lr, self.end_lr, self.steps = optimizer, start_lr, end_lr, steps
        self.on_step = on_step  # progress: called once a step is recorded
        self.beta, self.stop_factor = beta, stop_factor
        self.test = RangeTest()
        self.avg, self.best = 0.0, math.inf
        self._set_lr(0)

    def _set_lr(self, i: int) -> None:
        self.lr = self.start_lr * (self.end_lr / self.start_lr) ** (i / max(self.steps - 1, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def record(self, value: float) -> str | None:
        """Add a step's loss; why the test stops here, or None."""
        i = len(self.test.lrs)
        self.avg = self.beta * self.avg + (1 - self.beta) * value
        smooth = self.avg / (1 - self.beta ** (i + 1))  # debiased: the average starts at 0
        self.test.lrs.append(self.lr)
        self.test.losses.append(value)
        self.test.smoothed.append(smooth)
        if not math.isfinite(smooth):
            return "the loss is not finite"
        if i > 0 and smooth > self.stop_factor * self.best:
            return f"smoothed loss > {self.stop_factor:g}x its minimum"
        self.best = min(self.best, smooth)
        return "end of the ramp" if i + 1 == self.steps else None

    def after_step(self, step: StepInfo) -> None:
        stopped = self.record(step.loss.item())  # the loss before the step, as for a plain optimizer
        if self.on_step is not None:
            self.on_step()
        if stopped is not None:
            raise StopRun("lr_find", stopped)
        self._set_lr(len(self.test.lrs))


def range_test(trainer: Trainer, data, start_lr: float, end_lr: float, steps: int, beta: float = 0.98,
               stop_factor: float = 4.0, on_step=None) -> RangeTest:
    """Run the exponential LR ramp with `trainer` (its loss, protocol, precision, clipping, batches)
    on data.train_x/train_y through fit(), for at most `steps` steps; returns the recorded curve."""
    ramp = LRRamp(trainer.optimizer, start_lr, end_lr, steps, beta, stop_factor, on_step)
    trainer.observers = Observers({"lr_find": ramp})
    try:
        fit(trainer, data, itertools.count(1), validate=False)
    except StopRun as s:
        ramp.test.stopped = str(s)
    except Diverged as d:  # the trainer's own check of the step's loss
        ramp.test.stopped = ramp.record(d.loss)
    return ramp.test


def ramp_trainer(cfg: dict, model: nn.Module, n_train: int, device: torch.device, batch_size: int,
                 steps: int, accumulate: int = 1, class_counts: torch.Tensor | None = None) -> Trainer:
    """A Trainer for the range test: the run's settings, but one fixed batch size (micro-batches of
    `batch_size`, `accumulate` of them a step, as the run), no LR schedule, no LR scaling and no
    weight averaging (the ramp alone sets the LR). class_counts: the training samples per class, for
    loss.class_weights."""
    epochs = -(-steps // -(-n_train // (batch_size * accumulate)))
    cfg = {**cfg, "scheduler": {"name": "none"}, "epochs": epochs,
           "batch_size": {"policy": "fixed", "size": batch_size, "lr_scaling": "none", "base_size": batch_size,
                          "accumulate": accumulate, "sampler": cfg["batch_size"].get("sampler", "random")}}
    return Trainer(cfg, model, n_train, device, epochs=epochs, class_counts=class_counts)


def choice(overrides: list[str], group: str, fallback: str | None) -> str | None:
    """The option the overrides picked for a config group (model=cnn), else the config's own name."""
    picked = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == group and "=" in o]
    return picked[-1] if picked else fallback


def figure(test: RangeTest, sugg: dict[str, float], meta: dict | None = None):
    from matplotlib.figure import Figure

    from nnopt_cli.compare import figures

    meta = meta or {}
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(test.lrs, test.losses, color="0.75", linewidth=0.8, label="loss")
    ax.plot(test.lrs, test.smoothed, color="C0", label="smoothed loss (beta 0.98, debiased)")
    for (rule, lr), color in zip(sugg.items(), ("C3", "C2"), strict=True):
        ax.axvline(lr, color=color, linestyle="--", label=f"{rule}: {lr:.2g}")
    ax.set_xscale("log")
    finite = [v for v in test.smoothed if math.isfinite(v)]
    raw = [v for v in test.losses if math.isfinite(v)]
    if finite:  # the blow-up would squash the curve: show up to 4x the smoothed minimum
        ax.set_ylim(min(finite + raw) * 0.9, min(max(finite), 4 * min(finite)) * 1.1)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    names = meta.get("names") or {}
    what = " ".join(f"{k}={names[k]}" for k in ("optimizer", "model", "dataset") if names.get(k))
    fig.suptitle(f"LR range test\n{what or 'optimizer, model and dataset not recorded'} | "
                 f"batch size {meta.get('batch_size', '?')}, {len(test.lrs)} steps, one run", fontsize="medium")
    ax.grid(alpha=0.3, which="both")
    figures.legend(fig, ax)
    return fig


def write(out: Path, test: RangeTest, sugg: dict[str, float], meta: dict) -> None:
    """lr_find.csv, .json and .png, all or none (a full disk leaves no half a result)."""
    rows = [["step", "lr", "loss", "smoothed_loss"],
            *([i, *row] for i, row in enumerate(zip(test.lrs, test.losses, test.smoothed, strict=True), start=1))]
    clean = [v if math.isfinite(v) else None for v in test.losses]
    doc = {**meta, "stopped": test.stopped, "steps_run": len(test.lrs),
           "suggestion": {"rule": RULE, "optimizer.lr": sugg[RULE]}, "suggestions": sugg,
           "lr": test.lrs, "loss": clean, "smoothed_loss": [v if math.isfinite(v) else None for v in test.smoothed]}
    outputs.write_files(out, {"lr_find.csv": outputs.csv_text(rows), "lr_find.json": json.dumps(doc, indent=1) + "\n",
                              "lr_find.png": outputs.figure_png(figure(test, sugg, meta))})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnopt lr-find", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="example: nnopt lr-find optimizer=sgd model=cnn --steps 300\n"
               "overrides are those of nnopt train (config groups and keys)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides, as for nnopt train (optimizer=sgd ...)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first LR (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last LR (default 10)")
    p.add_argument("--steps", type=int, default=200, help="steps of the ramp (default 200)")
    p.add_argument("--stop-factor", type=float, default=4.0,
                   help="stop when the smoothed loss exceeds this x its minimum (default 4)")
    p.add_argument("--out", type=Path, help="output folder (default outputs/lr_find/<time>)")
    return p


def lr_find(args: argparse.Namespace) -> dict:

    need_num("--start-lr", args.start_lr, gt=0)
    need_num("--end-lr", args.end_lr, gt=args.start_lr)
    need_int("--steps", args.steps, 10)
    need_num("--stop-factor", args.stop_factor, gt=1)
    cfg = runs.compose_config(args.overrides)
    out = runs.output_dir("lr_find", args.out)
    device = resolve_device(cfg["device"])
    configure_threads(cfg["threads"])
    seed_everything(cfg["seed"], cfg["deterministic"])
    data = runs.load_data(cfg["dataset"]).to(device)
    model = runs.make_model(cfg, data.input_shape, data.num_classes).to(device)
    bs = int(cfg["batch_size"].get("size") or cfg["batch_size"].get("base_size") or 128)
    accumulate = int(cfg["batch_size"].get("accumulate", 1))
    trainer = ramp_trainer(cfg, model, len(data.train_x), device, bs, args.steps, accumulate, data.class_counts())
    with Count(args.steps, "nnopt lr-find", "steps") as count:  # stderr: bar on a terminal, else tenths
        test = range_test(trainer, data, args.start_lr, args.end_lr, args.steps, stop_factor=args.stop_factor,
                          on_step=count.advance)
    sugg = test.suggestions()
    meta = {"overrides": list(args.overrides), "start_lr": args.start_lr, "end_lr": args.end_lr,
            "steps": args.steps, "beta": 0.98, "stop_factor": args.stop_factor, "batch_size": bs,
            "accumulate": accumulate,
            "optimizer": cfg["optimizer"].get("_target_"),
            "names": {"optimizer": choice(args.overrides, "optimizer", str(cfg["optimizer"].get("_target_", "")).rsplit(".", 1)[-1]),
                      "model": choice(args.overrides, "model", cfg["model"].get("name")),
                      "dataset": choice(args.overrides, "dataset", cfg["dataset"].get("name"))}}
    write(out, test, sugg, meta)
    steep = sugg["steepest"]
    print(f"nnopt lr-find: {len(test.lrs)} steps, lr {test.lrs[0]:.2g} -> {test.lrs[-1]:.2g} "
          f"(stopped: {test.stopped})")
    print(f"suggested: optimizer.lr={sugg[RULE]:.3g}   (rule {RULE}: the LR of the lowest smoothed loss, "
          f"{sugg[RULE] * 10:.3g}, divided by 10)")
    print(f"also:      optimizer.lr={steep:.3g}   (rule steepest: where the smoothed loss falls fastest "
          "per decade of LR)")
    print(f"wrote {out}/lr_find.png, lr_find.csv, lr_find.json")
    return {"out": out, "suggestions": sugg, "test": test}


def run(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    report_errors("lr-find", lr_find, args)
