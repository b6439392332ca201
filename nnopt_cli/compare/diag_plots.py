"""Plots of diagnostics.jsonl (diagnostics=basic|full) across runs, for `nnopt compare --plot-kind diag|diag-heatmap`.

    diag          a per-layer quantity (--plot-metric, default grad_norm) against the optimizer step,
                  one panel per layer, one line per run or per group (mean, band = +- 1 sample std
                  over the runs that sampled that step)
    diag-heatmap  one panel per run or group: layers x sampled steps, colour = log10 of the quantity

End-of-run numbers (summary.json diag/sharpness, diag/hessian_trace, diag/dead_share,
diag/saturated_share) are table columns like any other metric: --metric diag/sharpness.
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from typing import Any

from nnopt_cli.compare.discover import Run, finite
from nnopt_cli.compare.files import read_jsonl
from nnopt_cli.compare.table import CompareError
from nnopt_cli.store import layout

KINDS = ("diag", "diag-heatmap")
QUANTITIES = ("grad_norm", "weight_norm", "update_ratio", "out_mean", "out_std", "act_mean", "act_std",
              "dead", "saturated")
FILE = layout.DIAGNOSTICS
LOG_SCALE = ("grad_norm", "weight_norm", "update_ratio")


def step_rows(run: Run) -> list[dict[str, Any]]:
    rows, _ = read_jsonl(run.path / FILE)
    return [r for r in rows if isinstance(r, dict) and r.get("kind") == "step" and isinstance(r.get("layers"), dict)]


def check(runs: list[Run], quantity: str | None) -> str:
    """The quantity to plot; refuses runs without diagnostics before anything is printed."""
    quantity = quantity or "grad_norm"
    if quantity not in QUANTITIES:
        raise CompareError(f"--plot-metric {quantity!r}: diagnostics plots show one of {', '.join(QUANTITIES)}")
    if not any((r.path / FILE).exists() for r in runs):
        raise CompareError(f"--plot-kind diag needs runs trained with diagnostics=basic|full ({FILE}); "
                           "none of the runs shown has one")
    return quantity


def layer_curves(runs: list[Run], quantity: str) -> dict[str, dict[int, list[float]]]:
    """layer -> step -> the values of the runs at that step (layers in the order they appear)."""
    out: dict[str, dict[int, list[float]]] = {}
    for r in runs:
        for row in step_rows(r):
            for layer, vals in row["layers"].items():
                v = vals.get(quantity) if isinstance(vals, dict) else None
                if finite(v) and isinstance(row.get("step"), int):
                    out.setdefault(layer, {}).setdefault(row["step"], []).append(float(v))
    return out


def layer_names(runs: list[Run]) -> dict[str, str]:
    """layer -> 'net.0 Linear 784x256' (its module name, type and shape as diagnostics.jsonl recorded
    them; older files name the type alone)."""
    out: dict[str, str] = {}
    for r in runs:
        for row in step_rows(r)[:1]:
            for layer, vals in row["layers"].items():
                if layer in out or not isinstance(vals, dict):
                    continue
                parts = [str(vals[k]) for k in ("type", "shape") if isinstance(vals.get(k), str) and vals[k]]
                out[layer] = " ".join([layer, *parts])
    return out


def _runs(series: list) -> list[Run]:
    return [r for s in series for r in s.runs]


def _mean_std(vs: list[float]) -> tuple[float, float | None]:
    m = math.fsum(vs) / len(vs)
    return m, math.sqrt(math.fsum((v - m) ** 2 for v in vs) / (len(vs) - 1)) if len(vs) > 1 else None


def lines_figure(series: list, quantity: str):
    """series: compare's plots.Series (label, runs)."""
    from matplotlib.figure import Figure

    from nnopt_cli.compare import figures

    figures.crowded(len(series))
    curves = [(s, layer_curves(s.runs, quantity)) for s in series]
    names = layer_names(_runs(series))
    layers = list(dict.fromkeys(name for _, c in curves for name in c))
    if not layers:
        raise CompareError(f"no run shown has {quantity} in its {FILE}")
    cols = min(3, len(layers))
    rows_n = math.ceil(len(layers) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows_n + 0.6), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    for ax, layer in zip(axes, layers, strict=False):
        for i, (s, c) in enumerate(curves):
            steps = sorted(c.get(layer, {}))
            if not steps:
                continue
            stats = [_mean_std(c[layer][t]) for t in steps]
            label = s.label if len(s.runs) == 1 else f"{s.label} (n={len(s.runs)})"
            look = figures.style(i)
            ax.plot(steps, [m for m, _ in stats], label=label, linewidth=1.2, **look)
            band = [(t, m, sd) for t, (m, sd) in zip(steps, stats, strict=True) if sd is not None]
            if band:
                ax.fill_between([b[0] for b in band], [b[1] - b[2] for b in band], [b[1] + b[2] for b in band],
                                color=look["color"], alpha=0.2, linewidth=0)
        if quantity in LOG_SCALE:
            ax.set_yscale("log")
        ax.set_title(names.get(layer, layer), fontsize="small")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(quantity)
        ax.grid(alpha=0.3)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    # one legend for all panels: the series a panel lacks still have their entry
    handles = {}
    for ax in axes[:len(layers)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    figures.legend(fig, axes[min(cols, len(layers)) - 1], handles=list(handles.values()), labels=list(handles))
    figures.titled(fig, f"{quantity} per layer" + (" (mean, band = ± 1 sample std)"
                                                   if any(len(s.runs) > 1 for s in series) else ""),
                   _runs(series), figures.per_point(len(s.runs) for s in series))
    return fig


def heatmap_figure(series: list, quantity: str):
    import numpy as np
    from matplotlib.figure import Figure

    from nnopt_cli.compare import figures

    maps = []
    for s in series[:8]:  # more panels than this are unreadable
        c = layer_curves(s.runs, quantity)
        if c:
            maps.append((s, c))
    if not maps:
        raise CompareError(f"no run shown has {quantity} in its {FILE}")
    log = quantity in LOG_SCALE
    fig = Figure(figsize=(5.5 * min(len(maps), 2), 3.2 * math.ceil(len(maps) / 2) + 0.6), layout="constrained")
    axes = fig.subplots(math.ceil(len(maps) / 2), min(len(maps), 2), squeeze=False).ravel()
    grids = []
    for s, c in maps:
        layers = list(c)
        steps = sorted({t for per in c.values() for t in per})
        z = np.full((len(layers), len(steps)), np.nan)
        for i, layer in enumerate(layers):
            for j, t in enumerate(steps):
                if t in c[layer]:
                    m = _mean_std(c[layer][t])[0]
                    z[i, j] = math.log10(m) if log and m > 0 else (np.nan if log else m)
        grids.append((s, layers, steps, z))
    # one colour scale for every panel, so runs compare by colour
    finite_z = np.concatenate([z[np.isfinite(z)] for *_, z in grids])
    vmin, vmax = (float(finite_z.min()), float(finite_z.max())) if finite_z.size else (None, None)
    names = layer_names(_runs(series))
    for ax, (s, layers, steps, z) in zip(axes, grids, strict=False):
        im = ax.imshow(z, aspect="auto", interpolation="nearest", cmap="magma", vmin=vmin, vmax=vmax,
                       extent=(steps[0] - 0.5, steps[-1] + 0.5, len(layers) - 0.5, -0.5))
        ax.set_yticks(range(len(layers)), [names.get(layer, layer) for layer in layers], fontsize="small")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("layer")
        ax.set_title(s.label if len(s.runs) == 1 else f"{s.label} (mean of n={len(s.runs)} seeds)", fontsize="small")
        fig.colorbar(im, ax=ax, label=f"log10 {quantity}" if log else quantity)
    for ax in axes[len(maps):]:
        ax.set_visible(False)
    shown = [s for s, _ in maps]
    left_out = len(series) - len(shown)
    figures.titled(fig, f"{quantity}: layers x steps" + (f" (first {len(shown)} of {len(series)} panels)"
                                                         if left_out else ""),
                   _runs(shown), figures.per_point(len(s.runs) for s in shown))
    return fig


def figure(kind: str, series: list, quantity: str):
    return lines_figure(series, quantity) if kind == "diag" else heatmap_figure(series, quantity)
