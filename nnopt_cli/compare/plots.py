"""Plots over runs, with matplotlib's object API (no pyplot state, no display needed).

Each `*_figure` function returns the Figure, so tests can count its lines before `save` writes
the PNG. A `Series` is one line: a single run, or a group of runs drawn as their mean with a
band of ± one sample standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nnopt_cli.compare import figures
from nnopt_cli.compare.discover import Run, finite, flatten
from nnopt_cli.compare.render import fmt
from nnopt_cli.store import outputs


@dataclass
class Series:
    label: str
    runs: list[Run]


def mean_std_by_epoch(runs: list[Run], metric: str) -> tuple[list[int], list[float], list[float | None]]:
    """Per epoch: the mean over the runs that logged the metric there, and the sample std (n >= 2)."""
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        for row in r.epochs:
            v, e = row.get(metric), row.get("epoch")
            if finite(v) and isinstance(e, int):
                by_epoch.setdefault(e, []).append(float(v))
    epochs = sorted(by_epoch)
    means, stds = [], []
    for e in epochs:
        vs = by_epoch[e]
        m = math.fsum(vs) / len(vs)
        means.append(m)
        stds.append(math.sqrt(math.fsum((v - m) ** 2 for v in vs) / (len(vs) - 1)) if len(vs) > 1 else None)
    return epochs, means, stds


def _plot_series(ax, series: list[Series], metric: str) -> int:
    drawn = 0
    for i, s in enumerate(series):
        epochs, means, stds = mean_std_by_epoch(s.runs, metric)
        if not epochs:
            continue
        label = s.label if len(s.runs) == 1 else f"{s.label} (n={len(s.runs)})"
        (line,) = ax.plot(epochs, means, marker="o", markersize=3, label=label, **figures.style(i))
        drawn += 1
        band = [(e, m, sd) for e, m, sd in zip(epochs, means, stds, strict=True) if sd is not None]
        if band:
            xs = [b[0] for b in band]
            ax.fill_between(xs, [b[1] - b[2] for b in band], [b[1] + b[2] for b in band],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    return drawn


def _runs(series: list[Series]) -> list[Run]:
    return [r for s in series for r in s.runs]


def curves_figure(series: list[Series], metric: str) -> Figure:
    """A metric against epoch, one line per series (groups: mean, band = ± 1 sample std)."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    figures.crowded(_plot_series(ax, series, metric))
    grouped = any(len(s.runs) > 1 for s in series)
    figures.legend(fig, ax)
    figures.titled(fig, f"{metric} per epoch" + (" (mean, band = ± 1 sample std)" if grouped else ""),
                   _runs(series), figures.per_point(len(s.runs) for s in series))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    return fig


def schedule_figure(series: list[Series]) -> Figure:
    """The learning rate and the batch size each epoch started with, one line per series."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax_lr, ax_bs = fig.subplots(1, 2)
    figures.crowded(_plot_series(ax_lr, series, "lr"))
    _plot_series(ax_bs, series, "batch_size")
    lrs = [row["lr"] for s in series for r in s.runs for row in r.epochs if finite(row.get("lr"))]
    if lrs and min(lrs) > 0 and max(lrs) / min(lrs) > 50:
        ax_lr.set_yscale("log")
    for ax, name in ((ax_lr, "learning rate (lr)"), (ax_bs, "batch size (batch_size)")):
        ax.set_title(f"{name} per epoch")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    figures.legend(fig, ax_bs, *ax_lr.get_legend_handles_labels())  # right of both panels
    figures.titled(fig, "schedules: lr and batch_size", _runs(series),
                   figures.per_point(len(s.runs) for s in series))
    return fig


PREFERRED = {"acc": "test/acc", "size": "size_bytes", "latency": "latency_ms"}


def pick_key(d: dict[str, Any], word: str) -> str | None:
    """The conventional key for word ('size' -> 'size_bytes') if d has it, else the first
    numeric key containing word; nested dicts (latency per batch size) are searched too."""
    flat = flatten({k: v for k, v in d.items() if k != "layers"})
    if finite(flat.get(PREFERRED.get(word, word))):
        return PREFERRED.get(word, word)
    return next((k for k, v in flat.items() if word in k and finite(v)), None)


def tradeoff_points(runs: list[Run], x: str, acc: str = "acc",
                    labels: dict[str, str] | None = None) -> list[tuple[float, float, str]]:
    """(x, accuracy, label) for each run with post-training stages: the trained model (the first
    stage's `before`) and the model after each stage."""
    pts = []
    for r in runs:
        if not r.stages:
            continue
        for name, d in [("trained", r.stages[0].before)] + [(st.name, st.after) for st in r.stages]:
            xk, ak = pick_key(d, x), pick_key(d, acc)
            if xk and ak:
                flat = flatten(d)
                pts.append((float(flat[xk]), float(flat[ak]), f"{(labels or {}).get(r.label, r.label)}: {name}"))
    return pts


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other point beats on both axes (smaller x, higher accuracy), by x."""
    front = []
    best = -math.inf
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def tradeoff_fronts(runs: list[Run], x: str, labels: dict[str, str] | None = None,
                    workloads: list[str] | None = None) -> dict[str, list[tuple[float, float, str]]]:
    """One Pareto front per workload (`workloads`: the workload keys that differ between the runs;
    none: one front), by workload label: a smaller model on another dataset beats nothing."""
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(" ".join(f"{k}={fmt(r.config.get(k))}" for k in workloads or []), []).append(r)
    return {w: pareto_front(tradeoff_points(members, x, labels=labels)) for w, members in by.items()}


def tradeoff_figure(runs: list[Run], x: str = "size", labels: dict[str, str] | None = None,
                    workloads: list[str] | None = None) -> Figure:
    """Test accuracy against model size (or latency, params, nonzeros) for runs with stages;
    each workload's Pareto front (best accuracy for its size) is drawn as a line through its points.
    Sizes in bytes go on a log axis in kB/MB."""
    pts = tradeoff_points(runs, x, labels=labels)
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    xname = x
    for r in runs:
        for st in r.stages:
            xname = pick_key(st.after, x) or xname
    in_bytes = x.startswith("size") or "bytes" in xname
    lo, hi = (min(p[0] for p in pts), max(p[0] for p in pts)) if pts else (0.0, 0.0)
    if pts:
        stages = list(dict.fromkeys(p[2].rsplit(": ", 1)[1] for p in pts))  # trained, then pipeline order
        for i, st in enumerate(stages):
            sel = [p for p in pts if p[2].rsplit(": ", 1)[1] == st]
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], label=st, alpha=0.8,
                       color=figures.style(i)["color"], marker=MARKERS[i % len(MARKERS)])
        for i, (w, front) in enumerate(tradeoff_fronts(runs, x, labels, workloads).items()):
            if not front:
                continue
            ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linewidth=1.2,
                    drawstyle="steps-post", marker="o", markerfacecolor="none", markersize=10,
                    linestyle=LINE_STYLES[i % len(LINE_STYLES)],
                    label=f"Pareto front{' ' + w if w else ''} ({len(front)} points)")
            for p in front:
                # points right of the middle get their label on their left: it stays inside the axes
                left = p[0] > (math.sqrt(lo * hi) if in_bytes and lo > 0 else (lo + hi) / 2)
                ax.annotate(figures.plain(p[2]), (p[0], p[1]), textcoords="offset points",
                            xytext=(-5 if left else 5, 5), ha="right" if left else "left", fontsize="x-small")
        if in_bytes and lo > 0:
            figures.bytes_axis(ax.xaxis)
        elif x == "latency" and lo > 0 and hi / lo > 20:
            ax.set_xscale("log")
        else:
            ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    figures.legend(fig, ax)
    figures.titled(fig, f"test accuracy vs {xname} after each post-training stage", runs,
                   "one point per run and stage (no mean)")
    ax.set_xlabel(xname)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    return fig


# one marker per stage, so stages stay apart without colour
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# one per workload's Pareto front
LINE_STYLES = ("-", "--", ":", "-.")


def save(fig: Figure, path: Path) -> None:
    """The PNG whole or not at all (a full disk is one line, and no half a file is left)."""
    outputs.save_figure(fig, path)


# ---------------------------------------------------------------------------- deciding plots


@dataclass
class LrSeries:
    """One line of the LR sensitivity plot: (lr, final metric) per run, and the LR its optimizer's
    config sets by default (None when the line mixes optimizers or the config is not ours)."""

    label: str
    points: list[tuple[float, float]]
    default_lr: float | None = None
    also_differ: list[str] = field(default_factory=list)  # keys besides seed that vary at one LR


def lr_figure(series: list[LrSeries], metric: str, runs: list[Run] | None = None,
              higher_is_better: bool = True) -> Figure:
    """LR sensitivity (DeepOBS): the final metric against optimizer.lr on a log axis, one line per
    series (optimizer); at each LR the mean over its seeds, band = ± 1 sample std. Each line's best
    LR (the tuned one) is a star, its config's default LR a dotted vertical line."""
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    figures.crowded(len(series))
    counts: list[int] = []
    for i, s in enumerate(series):
        by_lr: dict[float, list[float]] = {}
        for lr, v in s.points:
            by_lr.setdefault(lr, []).append(v)
        lrs = sorted(by_lr)
        means = [math.fsum(by_lr[x]) / len(by_lr[x]) for x in lrs]
        stds = [math.sqrt(math.fsum((v - m) ** 2 for v in by_lr[x]) / (len(by_lr[x]) - 1))
                if len(by_lr[x]) > 1 else 0.0 for x, m in zip(lrs, means, strict=True)]
        n = sorted({len(v) for v in by_lr.values()})
        counts += n
        seeds = f"n={n[0]}" if len(n) == 1 else f"n={n[0]}-{n[-1]}"
        what = (f"{seeds} runs per point, also differing in {', '.join(s.also_differ[:3])}" if s.also_differ
                else f"{seeds} seeds per point")
        look = figures.style(i)
        (line,) = ax.plot(lrs, means, marker="o", markersize=4, label=f"{s.label} ({what})", **look)
        ax.fill_between(lrs, [m - s for m, s in zip(means, stds, strict=True)],
                        [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.2,
                        linewidth=0)
        best = (max if higher_is_better else min)(range(len(lrs)), key=means.__getitem__)
        ax.plot([lrs[best]], [means[best]], marker="*", markersize=14, color=line.get_color(),
                markeredgecolor="black", linestyle="none")
        if s.default_lr is not None and s.default_lr > 0:
            ax.axvline(s.default_lr, color=line.get_color(), linestyle=":", linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("optimizer.lr")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, which="both")
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker="*", markersize=12, color="0.4", markeredgecolor="black", linestyle="none"),
                Line2D([], [], color="0.4", linestyle=":", linewidth=1.5)]
    labels += [f"tuned LR ({'highest' if higher_is_better else 'lowest'} mean)", "default LR (its optimizer config)"]
    figures.legend(fig, ax, handles=handles, labels=labels)
    figures.titled(fig, f"LR sensitivity: final {metric} (band = ± 1 sample std over seeds)", runs or [],
                   figures.per_point(counts, unit="runs" if any(s.also_differ for s in series) else "seeds"))
    return fig


def target_figure(bars: list[tuple[str, float, float, float, str]], time_name: str, target: str,
                  runs: list[Run] | None = None, per_bar: str = "") -> Figure:
    """Time to target per group: a bar at the median with 95% CI whiskers; 'never' where the
    median run did not reach it; each bar labelled with how many runs reached it."""
    fig = Figure(figsize=(max(7.0, 1.1 * len(bars) + 2), 5.0), layout="constrained")
    ax = fig.add_subplot()
    finite_vals = [v for _, m, lo, hi, _ in bars for v in (m, lo, hi) if math.isfinite(v)]
    top = 1.15 * max(finite_vals) if finite_vals else 1.0
    for i, (_, median, lo, hi, reached) in enumerate(bars):
        if math.isfinite(median):
            ax.bar(i, median, color=f"C{i % 10}", alpha=0.8)
            ax.errorbar(i, median, yerr=[[median - lo], [min(hi, top) - median]], color="black", capsize=5,
                        uplims=False)
            note = reached + ("" if math.isfinite(hi) else ", CI open above")
            ax.annotate(note, (i, min(hi, top)), textcoords="offset points", xytext=(0, 4), ha="center",
                        fontsize="x-small")
        else:
            ax.annotate(f"median: never\n({reached})", (i, 0), textcoords="offset points", xytext=(0, 4),
                        ha="center",
                        fontsize="small", color="red")
    crowded = sum(len(b[0]) for b in bars) > 12 * len(bars) or len(bars) > 6
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=25 if crowded else 0,
                  ha="right" if crowded else "center", fontsize="small")
    ax.set_ylim(0, top * 1.08)
    ax.set_ylabel(f"{time_name} to target")
    figures.titled(fig, f"{time_name} to {target} (median, whiskers: 95% bootstrap CI)", runs or [], per_bar)
    ax.grid(alpha=0.3, axis="y")
    return fig


def profile_figure(labels: list[str], rho: Any, taus: Any, scores: Any, time_name: str,
                   workloads: list[str], runs: list[Run] | None = None, per_workload: str = "") -> Figure:
    """AlgoPerf performance profiles: the share of workloads on which each group reached the target
    within tau times the fastest group's time; the legend holds each one's score (the integral of
    its profile over [1, 4], divided by 3)."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    figures.crowded(len(labels))
    ranks = len(workloads) >= MIN_PROFILE_WORKLOADS
    for n, i in enumerate(sorted(range(len(labels)), key=lambda i: -scores[i])):
        # equal profiles lie on top of each other: vary the dash and width so each stays visible
        ax.step(taus, rho[i], where="post", label=f"{labels[i]} (score {scores[i]:.3f})" if ranks else labels[i],
                color=f"C{n % 10}",
                linestyle=("-", "--", ":", "-.")[n % 4], linewidth=max(1.0, 3.0 - 0.5 * n))
    ax.set_xlim(taus[0], taus[-1])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"tau: ratio of {time_name} to target to the fastest group's")
    ax.set_ylabel("share of workloads")
    ax.grid(alpha=0.3)
    if len(workloads) < MIN_PROFILE_WORKLOADS:
        ax.text(0.5, 0.5, f"only {len(workloads)} workload(s): a profile ranks groups across workloads,\n"
                f"with fewer than {MIN_PROFILE_WORKLOADS} its order means nothing",
                transform=ax.transAxes, ha="center", va="center", fontsize="medium", color="red",
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "red"})
    figures.legend(fig, ax)
    figures.titled(fig, f"performance profile over {len(workloads)} workload(s): {'; '.join(workloads)}",
                   runs or [], per_workload)
    return fig


# a performance profile over fewer workloads than this ranks nothing (one workload: one race)
MIN_PROFILE_WORKLOADS = 3
