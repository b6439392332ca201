"""The terminal table at 80, 100 and 160 columns: the run name and the first metric stay whole, the
lowest-value columns are hidden first (one line names them), and no number is cut."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from nnopt_cli.cli.compare import parser
from nnopt_cli.compare import pipeline
from nnopt_cli.compare.render import LOW_VALUE, fmt, print_rich
from tests.compare.test_compare_workloads import edit, workload_runs

SWEEP = "multirun/2026-11-23/10-00-00"  # run names as long as a sweep's job folders make them


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = workload_runs(tmp_path_factory.mktemp("render") / SWEEP)
    for i, d in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        edit(d, "summary.json", lambda s, i=i: s.update({"test/loss": 0.123456 + i / 7, "best/val/acc": 0.9876543,
                                                         "best/val/epoch": 3, "train_time_s": 1234.5678 + i}))
    return root.parents[2]


def table_of(runs: Path, *options: str):
    args = parser().parse_args([str(runs), *options])
    return pipeline.prepare(args).table


def shown(table, width: int) -> str:
    buf = io.StringIO()
    print_rich(table, console=Console(file=buf, width=width, color_system=None))
    return buf.getvalue()


def header_names(out: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.startswith("┃"))
    return [c.strip() for c in line.strip("┃").split("┃")]


@pytest.mark.parametrize("width", [80, 100, 160])
def test_per_run_table_keeps_run_names_and_the_first_metric_whole(runs, width, capsys):
    table = table_of(runs, "--sort", "test/acc")
    first = next(c.key for c in table.columns if c.kind == "metric")
    assert first == "test/acc" and [c.key for c in table.columns][0] == "run"
    out = shown(table, width)
    assert "…" not in out and all(len(line) <= width for line in out.splitlines()), out
    names = header_names(out)
    assert names[0] == "run" and first in names and "status" in names
    for row in table.rows:
        line = next(ln for ln in out.splitlines() if f" {row['run']} " in ln)  # the whole name, on one line
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert cells[names.index(first)] == fmt(row[first])
    hidden = [c.key for c in table.columns if c.key not in names]
    if hidden:
        note = " ".join(out[out.index("hidden to fit"):].split())  # one line, wrapped at the width
        said = note.removeprefix(f"hidden to fit {width} columns: ").split(" (")[0].split(", ")
        assert sorted(said) == sorted(hidden)
        low = [k for k in LOW_VALUE if k in [c.key for c in table.columns]]
        assert said[:len(low)] == low[:len(said)]  # the lowest-value columns go first
    else:
        assert "hidden to fit" not in out
    if width == 80:
        assert {"epochs_run", "best/val/epoch", "train_time_s"} <= set(hidden)
    if width == 160:
        assert hidden == ["epochs_run"]  # the run names of a sweep take the room of one low-value column


@pytest.mark.parametrize("width", [80, 100, 160])
def test_grouped_table_keeps_mean_and_std_whole(runs, width):
    table = table_of(runs, "--group-by", "optimizer", "--stats", "--bootstrap", "200", "--metric",
                     "test/acc,test/loss,train_time_s")
    out = shown(table, width)
    assert "…" not in out and all(len(line) <= width for line in out.splitlines()), out
    names = header_names(out)
    assert names[:4] == ["dataset", "optimizer", "runs", "test/acc"]
    for row in table.rows:
        cell = fmt(row["test/acc"])
        assert " ± " in cell and any(cell in ln and f" {row['optimizer']} " in ln for ln in out.splitlines())
    if width < 160:
        assert names.index("test/acc") < len(names) and "train_time_s" not in names


def test_a_table_too_wide_even_after_hiding_folds_instead_of_cutting(runs):
    table = table_of(runs, "--group-by", "optimizer", "--stats", "--bootstrap", "200", "--metric",
                     "test/acc,test/loss")
    out = shown(table, 40)
    assert "…" not in out and all(len(line) <= 40 for line in out.splitlines())
    assert "┃        test/acc ┃" in out  # the group keys fold; the first metric keeps its width
    for row in table.rows:  # every digit of the first metric is there, on one line
        assert any(fmt(row["test/acc"]) in ln for ln in out.splitlines())
