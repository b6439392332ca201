"""What every figure shares: a subtitle that names what it shows, line styles that stay apart, a
legend that stays inside the saved image, and byte axes in kB/MB.

    context      'dataset=mnist1d model=mlp | optimizers: sgd, adam | mean of n=3 seeds per point'
    style(i)     the i-th line's colour and dash: 20 distinct pairs (10 colours x solid/dashed)
    crowded      one console line when a figure has more lines than that (group them instead)
    legend       beside the axes (constrained layout makes room), the figure widened to hold it
    bytes_axis   a log axis labelled 500 kB, 2 MB, ... (no 1e6 offset)

Imported only when a figure is drawn (it imports matplotlib).
"""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Iterable

from matplotlib.ticker import FuncFormatter, LogLocator

from nnopt_cli.compare.discover import Run
from nnopt_cli.compare.render import fmt

COLOURS = tuple(f"C{i}" for i in range(10))
DASHES = ("-", "--")
MAX_LINES = len(COLOURS) * len(DASHES)
# a legend's text at fontsize "small" is about this wide per character (inches)
CHAR_WIDTH = 0.065
LEGEND_ROW = 0.2
TITLE_CHAR_WIDTH = 0.08  # a title's character at fontsize "medium"


def style(i: int) -> dict[str, str]:
    """Colour and line style of the i-th line; the first MAX_LINES pairs are all different."""
    return {"color": COLOURS[i % len(COLOURS)], "linestyle": DASHES[(i // len(COLOURS)) % len(DASHES)]}


def crowded(n: int, prog: str = "nnopt compare") -> bool:
    """One line on stderr when n lines cannot all be told apart; True then."""
    if n <= MAX_LINES:
        return False
    print(f"{prog}: warning: {n} lines in one plot, more than the {MAX_LINES} colour and line style pairs that "
          "can be told apart; group the runs (--group-by optimizer, ...) or keep fewer (--where ...)",
          file=sys.stderr)
    return True


def _names(runs: Iterable[Run], key: str) -> list[str]:
    return list(dict.fromkeys(fmt(r.config[key]) for r in runs if r.config.get(key) is not None))


def workload_text(runs: list[Run]) -> str:
    """'dataset=mnist1d model=mlp', or 'datasets: mnist, mnist1d | model=mlp' when the runs differ."""
    names = {key: _names(runs, key) for key in ("dataset", "model")}
    if all(len(v) <= 1 for v in names.values()):
        return " ".join(f"{k}={v[0]}" for k, v in names.items() if v) or "workload not recorded"
    return " | ".join(f"{k}={v[0]}" if len(v) == 1 else f"{k}s: {', '.join(v)}" for k, v in names.items() if v)


def optimizer_text(runs: list[Run]) -> str:
    names = _names(runs, "optimizer")
    return f"optimizer{'s' if len(names) > 1 else ''}: {', '.join(names)}" if names else ""


def per_point(counts: Iterable[int], what: str = "point", unit: str = "seeds") -> str:
    """'mean of n=3 seeds per point', 'n=2-3 ...', or '1 run per line' when nothing is averaged."""
    counts = sorted(set(counts))
    if not counts:
        return ""
    if counts == [1]:
        return "1 run per line (no mean)"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"mean of n={n} {unit} per {what}"


def context(runs: list[Run], *extra: str) -> str:
    """The subtitle: workload, optimizers and what each point is."""
    return " | ".join(p for p in (workload_text(runs), optimizer_text(runs), *extra) if p)


def plain(text: str) -> str:
    """Text shown as written: a '$' from a folder name or config value starts no mathtext."""
    return str(text).replace("$", r"\$")


def titled(fig, title: str, runs: list[Run], *extra: str) -> None:
    """The figure's title and, below it, the context line, both wrapped to the figure's width (call
    it after `legend`, which may widen the figure)."""
    width = max(40, int(fig.get_figwidth() / TITLE_CHAR_WIDTH))
    lines = [*textwrap.wrap(title, width), *textwrap.wrap(context(runs, *extra), width)]
    fig.suptitle(plain("\n".join(lines)), fontsize="medium")


def legend(fig, ax, handles=None, labels=None, fontsize: str = "small") -> None:
    """The legend beside `ax`, right of it and inside the saved image: constrained layout makes
    room for an axes' legend, and the figure grows wide (and tall) enough that the axes keep theirs."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    w, h = fig.get_size_inches()
    rows_fit = max(1, int((h - TITLE_SPACE) / LEGEND_ROW))
    ncols = math.ceil(len(labels) / rows_fit)
    longest = max(len(str(lab)) for lab in labels)
    fig.set_size_inches(w + ncols * (longest * CHAR_WIDTH + 0.6) + 0.2,
                        max(h, min(len(labels), rows_fit) * LEGEND_ROW + TITLE_SPACE))
    ax.legend(handles, [plain(lab) for lab in labels], loc="upper left", bbox_to_anchor=(1.02, 1.0),
              borderaxespad=0.0, fontsize=fontsize, ncols=ncols)


# the title's two lines and the x axis' label take about this much of a figure's height (inches)
TITLE_SPACE = 1.4


def _bytes(v: float, _pos=None) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.3g} B"


def bytes_axis(axis) -> None:
    """A log byte axis with readable units: 100 kB, 1 MB (decimal units, as size_bytes counts)."""
    axis.axes.set_xscale("log") if axis.axis_name == "x" else axis.axes.set_yscale("log")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(_bytes))
    axis.set_minor_formatter(FuncFormatter(lambda v, p: ""))
