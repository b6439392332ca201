"""`nnopt lr-find`: the LR range test (Smith 2017, "Cyclical learning rates", as in fastai's lr_find).

Train a fresh copy of the configured model with the configured optimizer while the LR grows
exponentially from --start-lr to --end-lr over --steps steps, one random training batch per step.
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
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nnopt_cli.config.checks import need_int, need_num
from nnopt_cli.errors import NnoptError, report_errors
from nnopt_cli.optim.optimizers import Protocol, build_optimizer, optimizer_step
from nnopt_cli.run import tools as runs
from nnopt_cli.training.device import configure_threads, resolve_device, seed_everything

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


def range_test(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               batch_size: int, start_lr: float, end_lr: float, steps: int, beta: float = 0.98,
               stop_factor: float = 4.0, generator: torch.Generator | None = None,
               step_kind: str = "plain") -> RangeTest:
    """Run the exponential LR ramp on (x, y); returns the recorded curve. step_kind: the optimizer's
    protocol (optim.Protocol.step), so closure and Hessian-based optimizers step as in training."""
    out = RangeTest()
    g = generator or torch.Generator().manual_seed(0)
    order, pos = torch.randperm(len(x), generator=g), 0
    avg, best = 0.0, math.inf
    model.train()
    for i in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (i / max(steps - 1, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if pos + batch_size > len(order):  # a new pass in a new order
            order, pos = torch.randperm(len(x), generator=g), 0
        idx = order[pos:pos + batch_size].to(x.device)
        pos += batch_size
        xb, yb, losses = x[idx], y[idx], []

        def closure(create_graph: bool = False, xb=xb, yb=yb, losses=losses) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward(create_graph=create_graph)
            losses.append(loss.detach())
            return loss

        optimizer_step(optimizer, step_kind, closure)
        value = losses[0].item()  # the loss before the step, as for a plain optimizer
        avg = beta * avg + (1 - beta) * value
        smooth = avg / (1 - beta ** (i + 1))  # debiased: the average starts at 0
        out.lrs.append(lr)
        out.losses.append(value)
        out.smoothed.append(smooth)
        if not math.isfinite(smooth):
            out.stopped = "the loss is not finite"
            break
        if i > 0 and smooth > stop_factor * best:
            out.stopped = f"smoothed loss > {stop_factor:g}x its minimum"
            break
        best = min(best, smooth)
    return out


def figure(test: RangeTest, sugg: dict[str, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
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
    ax.set_title("LR range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig


def write(out: Path, test: RangeTest, sugg: dict[str, float], meta: dict) -> None:
    with open(out / "lr_find.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, row in enumerate(zip(test.lrs, test.losses, test.smoothed, strict=True), start=1):
            w.writerow([i, *row])
    clean = [v if math.isfinite(v) else None for v in test.losses]
    doc = {**meta, "stopped": test.stopped, "steps_run": len(test.lrs),
           "suggestion": {"rule": RULE, "optimizer.lr": sugg[RULE]}, "suggestions": sugg,
           "lr": test.lrs, "loss": clean, "smoothed_loss": [v if math.isfinite(v) else None for v in test.smoothed]}
    (out / "lr_find.json").write_text(json.dumps(doc, indent=1) + "\n")
    figure(test, sugg).savefig(out / "lr_find.png", dpi=120, format="png")


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
    optimizer = build_optimizer(cfg["optimizer"], model)
    bs = cfg["batch_size"].get("size") or cfg["batch_size"].get("base_size") or 128
    test = range_test(model, optimizer, data.train_x, data.train_y, int(bs), args.start_lr, args.end_lr,
                      args.steps, stop_factor=args.stop_factor,
                      generator=torch.Generator().manual_seed(cfg["seed"]),
                      step_kind=Protocol.from_config(cfg["optimizer"]).step)
    sugg = test.suggestions()
    meta = {"overrides": list(args.overrides), "start_lr": args.start_lr, "end_lr": args.end_lr,
            "steps": args.steps, "beta": 0.98, "stop_factor": args.stop_factor, "batch_size": int(bs),
            "optimizer": cfg["optimizer"].get("_target_")}
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
