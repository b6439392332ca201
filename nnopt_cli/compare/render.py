"""Write a `Table` as a rich table (terminal), csv, markdown or json.

csv and json hold raw values (full precision, empty / null where a run has no value) so pandas
reads them as they are: `pd.read_csv("runs.csv")`, `pd.read_json("runs.json")`. Aggregated
metrics become two columns, `<metric>_mean` and `<metric>_std`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from typing import Any, TextIO

from nnopt_cli.compare.table import MISSING, Agg, Interval, Table

FORMATS = ("table", "csv", "markdown", "json")
DASH = "–"


def fmt(v: Any) -> str:
    """A cell as text: 4 significant digits for floats; mean ± std (2 digits) for aggregates."""
    if isinstance(v, Agg):
        if v.mean is None:
            return DASH
        return fmt(v.mean) if v.std is None else f"{fmt(v.mean)} ± {v.std:.2g}"  # a spread needs 2 digits
    if isinstance(v, Interval):
        if v.value is None:
            return DASH
        if v.value == math.inf and v.lo == math.inf:
            return "never"  # a median time to target where (nearly) every run missed it
        return f"{fmt(v.value)} [{fmt(v.lo)}, {fmt(v.hi)}]"
    if v is None or v is MISSING:
        return DASH
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def is_numeric_column(table: Table, key: str) -> bool:
    for row in table.rows:
        v = row.get(key)
        if isinstance(v, (Agg, Interval)) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            return True
    return False


def flat_records(table: Table) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and one dict per row with raw values; an Agg becomes _mean and _std."""
    names: list[str] = []
    for c in table.columns:
        if c.kind == "interval":
            names += [c.key, f"{c.key}_lo", f"{c.key}_hi"]
        else:
            names += [f"{c.key}_mean", f"{c.key}_std"] if table.grouped and c.kind == "metric" else [c.key]
    records = []
    for row in table.rows:
        rec: dict[str, Any] = {}
        for c in table.columns:
            v = row.get(c.key)
            if isinstance(v, Agg):
                rec[f"{c.key}_mean"], rec[f"{c.key}_std"] = v.mean, v.std
            elif c.kind == "interval":
                iv = v if isinstance(v, Interval) else Interval(None, None, None)
                rec[c.key], rec[f"{c.key}_lo"], rec[f"{c.key}_hi"] = iv.value, iv.lo, iv.hi
            else:
                rec[c.key] = None if v is MISSING else v
        records.append({k: _clean(v) for k, v in rec.items()})
    return names, records


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def to_csv(table: Table) -> str:
    names, records = flat_records(table)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    for rec in records:
        w.writerow(["" if rec.get(n) is None else (json.dumps(rec[n]) if isinstance(rec[n], (list, dict))
                                                   else rec[n]) for n in names])
    return buf.getvalue()


def to_json(table: Table) -> str:
    _, records = flat_records(table)
    return json.dumps(records, indent=2) + "\n"


def to_markdown(table: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    keys = [c.key for c in table.columns]
    align = ["---:" if is_numeric_column(table, k) else "---" for k in keys]
    lines = ["| " + " | ".join(esc(k) for k in keys) + " |", "| " + " | ".join(align) + " |"]
    for row in table.rows:
        lines.append("| " + " | ".join(esc(fmt(row.get(k))) for k in keys) + " |")
    out = "\n".join(lines) + "\n"
    if table.notes:
        out += "\n" + "\n".join(f"{n}." for n in table.notes) + "\n"
    return out


STATUS_STYLE = {"completed": "green", "diverged": "red", "failed": "red", "corrupt": "red",
                "interrupted": "yellow", "running": "yellow", "incomplete": "yellow",
                "better": "green", "worse": "red", "not resolved": "yellow", "never": "yellow"}

# the columns a narrow terminal hides first, in this order; then the other metrics, last first, and
# then a per-run table's config keys. The run name, the group keys, counts, status, verdict and the
# first metric are never hidden.
LOW_VALUE = ("epochs_run", "best/val/epoch", "train_time_s", "eval_every_steps", "p_perm", "target_epochs",
             "target_samples", "target_seconds", "best/val/acc")


def hide_order(table: Table) -> list[str]:
    """The columns to hide, first to last, when the table is wider than the terminal."""
    metrics = [c.key for c in table.columns if c.kind in ("metric", "interval")]
    first = next((c.key for c in table.columns if c.kind == "metric"), None)
    rest = [k for k in metrics if k != first and k != f"{first}_iqm"]
    named = [k for k in LOW_VALUE if k in rest]
    order = named + [k for k in reversed(rest) if k not in named]
    order += [c.key for c in reversed(table.columns) if c.kind == "text"]  # target reached, seeds to resolve
    if first is not None and f"{first}_iqm" in metrics:
        order.append(f"{first}_iqm")  # the first metric's mean ± std stays
    if not table.grouped:
        order += [c.key for c in reversed(table.columns) if c.kind == "config"]
    return order


def natural_width(table: Table, key: str) -> int:
    from rich.cells import cell_len

    return max([cell_len(key), *(cell_len(fmt(row.get(key))) for row in table.rows)])


def fit(table: Table, width: int) -> list[str]:
    """The columns to hide so that the rest fit `width` cells, in hide_order; [] when all fit (or
    when hiding every hideable one would not be enough: then the wide cells fold instead)."""
    widths = {c.key: natural_width(table, c.key) + 3 for c in table.columns}  # padding 2 and a rule
    total = 1 + sum(widths.values())
    hidden: list[str] = []
    for key in hide_order(table):
        if total <= width:
            break
        hidden.append(key)
        total -= widths[key]
    return hidden


def print_rich(table: Table, file: TextIO | None = None, console=None) -> None:
    """The table in the terminal's width: the lowest-value columns are hidden first (a line names
    them) and numbers are never cut (a cell that still does not fit folds onto a second line)."""
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    file = file or sys.stdout
    # piped into a file or pager: print at the table's natural width instead of wrapping at 80
    console = console or Console(file=file, width=None if file.isatty() else 400, soft_wrap=False)
    hidden = fit(table, console.width)
    rt = RichTable(caption="\n".join(table.notes) or None, caption_justify="left")
    first = next((c.key for c in table.columns if c.kind == "metric"), None)
    columns = [c for c in table.columns if c.key not in hidden]
    for c in columns:
        numeric = is_numeric_column(table, c.key)
        whole = c.kind == "run" or c.key == first  # never narrowed; the other cells fold if they must
        rt.add_column(c.key, justify="right" if numeric else "left", overflow="fold",
                      style="bold" if c.kind == "config" else None, no_wrap=whole,
                      min_width=natural_width(table, c.key) if whole else None)
    for row in table.rows:
        cells = []
        for c in columns:
            text = fmt(row.get(c.key))  # Text, not markup: a value like [256] is not a style tag
            styled = c.kind in ("status", "verdict")
            cells.append(Text(text, style=STATUS_STYLE.get(text, "") if styled else ""))
        rt.add_row(*cells)
    console.print(rt)
    if hidden:
        console.print(Text(f"hidden to fit {console.width} columns: {', '.join(hidden)} (a wider terminal or "
                           "--format csv shows every column)"))


def render(table: Table, fmt_name: str, file: TextIO | None = None) -> None:
    file = file or sys.stdout
    if fmt_name == "table":
        print_rich(table, file)
    elif fmt_name == "csv":
        file.write(to_csv(table))
    elif fmt_name == "markdown":
        file.write(to_markdown(table))
    elif fmt_name == "json":
        file.write(to_json(table))
    else:
        raise ValueError(fmt_name)
