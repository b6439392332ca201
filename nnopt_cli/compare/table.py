"""Turn runs into a table: which config keys differ, filtering, grouping (mean ± std), sorting.

Plain data in, plain data out: `Table` holds columns and rows of raw values (an `Agg` where a
group's runs were averaged); `render.py` formats it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from nnopt_cli.compare.discover import Run, finite, is_number
from nnopt_cli.compare.files import Loader
from nnopt_cli.errors import NnoptError
from nnopt_cli.store.layout import LABEL_KEYS

# the final metrics shown when --metric is not given (those that no run has are dropped): the first is
# the task's own (classification: test/acc; regression: test/rmse, beside its noise floor, an MSE)
DEFAULT_METRICS = ("test/acc", "test/rmse", "test/r2", "test/loss", "noise_floor", "best/val/acc", "best/val/loss",
                   "best/val/epoch", "epochs_run", "train_time_s")
# per stage, the first metric that is (or else contains) one of these, in this order
STAGE_DEFAULTS = (("test/acc", "test/rmse"), ("size_bytes", "size"), ("sparsity",), ("latency_ms", "latency"))
# metrics where smaller is better: --sort puts the smallest first for these, the largest for the rest
LOWER_IS_BETTER = ("loss", "mse", "noise_floor", "time", "latency", "size", "bytes", "params", "nonzeros",
                   "penalty", "grad_norm")
MISSING = object()


class CompareError(NnoptError):
    """Bad compare arguments: one line naming the value and what is allowed."""


@dataclass
class Agg:
    """A metric over a group's completed runs: mean, sample standard deviation (n - 1), count."""

    mean: float | None
    std: float | None
    n: int

    @staticmethod
    def of(values: list[float]) -> Agg:
        n = len(values)
        if n == 0:
            return Agg(None, None, 0)
        try:
            mean = math.fsum(values) / n
            std = math.sqrt(math.fsum((v - mean) * (v - mean) for v in values) / (n - 1)) if n > 1 else None
        except (OverflowError, ValueError):  # values near float's limit: plain sums, which saturate to inf
            mean = sum(values) / n
            std = math.sqrt(sum((v - mean) * (v - mean) for v in values) / (n - 1)) if n > 1 else None
        return Agg(mean, std, n)


@dataclass
class Interval:
    """A point estimate with its 95% confidence interval (compare --stats/--target/--baseline)."""

    value: float | None
    lo: float | None
    hi: float | None


@dataclass
class Column:
    key: str
    kind: str  # run | config | metric | status | count | interval | verdict | text


# a grouped row keeps its runs under this key (no column shows it) for the statistics added later
MEMBERS = "_members"


@dataclass
class Table:
    columns: list[Column]
    rows: list[dict[str, Any]]
    grouped: bool = False
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- names


def _union(keys_per_run) -> list[str]:
    seen: dict[str, None] = {}
    for keys in keys_per_run:
        for k in keys:
            seen.setdefault(k, None)
    return list(seen)


def config_keys(runs: list[Run]) -> list[str]:
    return _union(r.config for r in runs)


def metric_names(runs: list[Run]) -> list[str]:
    return _union(r.metrics() for r in runs)


def hashable(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return v


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys whose value is not the same in every run, in config order.

    A config group's choice (`optimizer` = adam) stands for the keys under it: `optimizer.lr` is
    shown only when it differs between runs that made the same choice (a sweep over the LR),
    not merely because SGD and Adam have different default LRs."""
    runs = [r for r in runs if r.config]
    keys = config_keys(runs)
    shown = []
    for k in keys:
        values = {hashable(r.config.get(k, MISSING)) for r in runs}
        if len(values) <= 1:
            continue
        top = k.split(".", 1)[0]
        if top != k and top in keys:
            by_choice: dict[Any, set] = {}
            for r in runs:
                by_choice.setdefault(hashable(r.config.get(top, MISSING)), set()).add(
                    hashable(r.config.get(k, MISSING)))
            if all(len(v) <= 1 for v in by_choice.values()):
                continue
        shown.append(k)
    return shown


def check_names(option: str, names: list[str], valid: list[str]) -> None:
    bad = [n for n in names if n not in valid]
    if bad:
        raise CompareError(f"unknown name {bad[0]!r} in {option}; valid names: {', '.join(valid)}")


def default_metrics(runs: list[Run]) -> list[str]:
    """DEFAULT_METRICS, then for each post-training stage its accuracy, size, sparsity and latency."""
    present = metric_names(runs)
    stage_keys = []
    for name in _union([st.name for st in r.stages] for r in runs):
        mine = [m for m in present if m.startswith(name + "/")]
        for words in STAGE_DEFAULTS:
            hit = next((m for m in mine if any(m == f"{name}/{w}" for w in words)), None)
            hit = hit or next((m for m in mine if any(w in m[len(name) + 1:] for w in words)), None)
            if hit:
                stage_keys.append(hit)
    return [m for m in DEFAULT_METRICS if m in present] + _union([stage_keys])


# ---------------------------------------------------------------------------- filtering


def parse_where(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompareError(f"--where {item!r}: expected key=value, e.g. --where optimizer=adam")
        out.append((key.strip(), value.strip()))
    return out


def value_of(run: Run, key: str) -> Any:
    if key == "status":
        return run.status
    if key in run.config:
        return run.config[key]
    return run.metrics().get(key, MISSING)


def matches(value: Any, wanted: str) -> bool:
    """Does a run's value equal what the user typed? `adam`, `0.001`, `1e-3`, `[256]`, `true`;
    a comma list means any of them (`optimizer=sgd,adam`)."""
    if value is MISSING:
        return False
    alternatives = [wanted] if wanted.startswith("[") else wanted.split(",")
    for text in alternatives:
        try:
            parsed = yaml.load(text, Loader=Loader)
        except yaml.YAMLError:
            parsed = text
        if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as text
            try:
                parsed = float(text)
            except ValueError:
                pass
        if is_number(value) and is_number(parsed):
            if math.isclose(value, parsed, rel_tol=1e-9, abs_tol=0.0):
                return True
        elif isinstance(value, bool) == isinstance(parsed, bool) and value == parsed:
            return True
        if str(value) == text:
            return True
    return False


def matches_key(run: Run, key: str, wanted: str) -> bool:
    """`tags=baseline`: a run whose tags include it (`tags=[a,b]` still compares the whole list)."""
    value = value_of(run, key)
    if key == "tags" and isinstance(value, list) and not wanted.startswith("["):
        return any(matches(t, w) for t in value for w in wanted.split(","))
    return matches(value, wanted)


def filter_runs(runs: list[Run], where: list[tuple[str, str]]) -> list[Run]:
    return [r for r in runs if all(matches_key(r, k, v) for k, v in where)]


def label_keys(runs: list[Run]) -> list[str]:
    """name and tags, when some run has them: shown beside the folder whether or not they differ."""
    return [k for k in LABEL_KEYS if any(r.config.get(k) for r in runs)]


# ---------------------------------------------------------------------------- sorting


def parse_sort(spec: str) -> tuple[str, bool | None]:
    """'test/acc' -> (key, None: best first); 'key:asc' / 'key:desc' force the order."""
    key, _, order = spec.rpartition(":") if spec.endswith((":asc", ":desc")) else (spec, "", "")
    return key, {"asc": False, "desc": True}.get(order)


def descending_by_default(key: str, is_metric: bool) -> bool:
    return is_metric and not any(w in key for w in LOWER_IS_BETTER)


def sort_rows(rows: list[dict], key: str, descending: bool) -> list[dict]:
    """Numbers first (in the order asked), then text, then rows without a value."""
    def val(row):
        v = row.get(key)
        return v.mean if isinstance(v, Agg) else v

    nums = sorted((r for r in rows if finite(val(r))), key=val, reverse=descending)
    texts = sorted((r for r in rows if not finite(val(r)) and val(r) not in (None, MISSING)
                    and not (is_number(val(r)))), key=lambda r: str(val(r)), reverse=descending)
    taken = {id(r) for r in nums + texts}
    return nums + texts + [r for r in rows if id(r) not in taken]


# ---------------------------------------------------------------------------- building


def build_table(runs: list[Run], metrics: list[str], group_by: list[str] | None = None,
                sort: str | None = None) -> Table:
    """The table for runs already filtered: one row per run, or one per group with aggregates."""
    labels = label_keys(runs)
    diff = [k for k in differing_keys(runs) if k not in labels]
    if group_by:
        table = _grouped(runs, metrics, group_by)
    else:
        cols = [Column("run", "run"), *(Column(k, "text") for k in labels), *(Column(k, "config") for k in diff),
                *(Column(m, "metric") for m in metrics), Column("status", "status")]
        rows = []
        for r in runs:
            vals = r.metrics()
            row = {"run": r.label, **{k: r.config.get(k) for k in (*labels, *diff)},
                   **{m: vals.get(m) for m in metrics}, "status": r.status, MEMBERS: [r]}
            rows.append(row)
        table = Table(cols, rows)
    if sort:
        key, desc = parse_sort(sort)
        if desc is None:
            desc = descending_by_default(key, key in metrics)
        table.rows = sort_rows(table.rows, key, desc)
    return table


def _grouped(runs: list[Run], metrics: list[str], group_by: list[str]) -> Table:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(hashable(r.config.get(k)) for k in group_by), []).append(r)
    rows = []
    any_left_out = False
    nonfinite: list[str] = []
    for members in groups.values():
        done = [r for r in members if r.completed]
        left_out = len(members) - len(done)
        any_left_out = any_left_out or left_out > 0
        row: dict[str, Any] = {k: members[0].config.get(k) for k in group_by}
        row["runs"] = len(done)
        row["left out"] = left_out
        row[MEMBERS] = members
        for m in metrics:
            values = [r.metrics().get(m) for r in done]
            row[m] = Agg.of([v for v in values if finite(v)])
            odd = sum(1 for v in values if is_number(v) and not finite(v))  # NaN, inf, beyond float range
            if odd:  # never silently: the mean is over fewer runs than 'runs' says
                label = ", ".join(f"{k}={row[k]}" for k in group_by)
                nonfinite.append(f"{m}: {odd} of {len(done)} run(s) of {label} are NaN/inf, "
                                 f"not in its mean ± std (over {row[m].n})")
        rows.append(row)
    cols = [*(Column(k, "config") for k in group_by), Column("runs", "count")]
    if any_left_out:
        cols.append(Column("left out", "count"))
    cols += [Column(m, "metric") for m in metrics]
    notes = ["metrics: mean ± sample std (n - 1) over each group's completed runs; 'runs' counts them"]
    if any_left_out:
        notes.append("'left out': runs of the group that did not complete (not in the averages)")
    return Table(cols, rows, grouped=True, notes=notes + nonfinite)
