"""`nnopt compare` on real run folders (a tiny `nnopt train -m +experiment=optimizers` sweep) and on
hand-made ones with known numbers or corrupt files."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread

from nnopt_cli.cli.compare import run as compare_main
from nnopt_cli.compare import plots
from nnopt_cli.compare.discover import discover, read_run, resolve
from nnopt_cli.compare.table import Agg
from tests.conftest import TINY, run_cli


def compare(capsys, *args: str) -> tuple[int, str, str]:
    """Run `nnopt compare args` in this process; (exit code, stdout, stderr)."""
    try:
        compare_main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def compare_json(capsys, *args: str) -> list[dict]:
    code, out, err = compare(capsys, *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """4 real runs: the optimizers preset on tiny synthetic data, cut to sgd/adam x seeds 0,1."""
    root = tmp_path_factory.mktemp("compare")
    out = run_cli("train", "-m", "+experiment=optimizers", *TINY, "optimizer=sgd,adam",
                  f"hydra.sweep.dir={root}/sweep", "hydra.sweep.subdir=${hydra.job.num}", cwd=root)  # in grid order
    assert out.returncode == 0, out.stderr[-2000:]
    return root / "sweep"


@pytest.fixture(scope="module")
def messy(sweep, tmp_path_factory) -> Path:
    """Two good runs next to a truncated summary, a torn metrics line, a missing summary, a failed run."""
    root = tmp_path_factory.mktemp("messy")
    good = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name, src in (("ok0", good[0]), ("ok1", good[2]), ("truncated", good[0]), ("torn", good[1]),
                      ("nosummary", good[1]), ("failed", good[3])):
        shutil.copytree(src, root / name)
    s = (root / "truncated" / "summary.json").read_text()
    (root / "truncated" / "summary.json").write_text(s[: len(s) // 2])
    summary = json.loads((root / "torn" / "summary.json").read_text())
    (root / "torn" / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    lines = (root / "torn" / "metrics.jsonl").read_text().splitlines()
    (root / "torn" / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
    (root / "nosummary" / "summary.json").unlink()
    failed = json.loads((root / "failed" / "summary.json").read_text())
    failed.update(status="failed", error="boom")
    (root / "failed" / "summary.json").write_text(json.dumps(failed))
    return root


# ---------------------------------------------------------------------------- real runs


def test_one_row_per_run_with_differing_keys_and_final_metrics(sweep, capsys):
    rows = compare_json(capsys, str(sweep))
    assert len(rows) == 4
    cols = list(rows[0])
    # the keys that differ, by readable choice name; optimizer.lr differs (0.1 vs 0.001) but only
    # because the choice differs, so the choice column stands for it
    assert cols[:3] == ["run", "optimizer", "seed"]
    assert "optimizer.lr" not in cols and "optimizer._target_" not in cols and "dataset" not in cols
    assert {(r["optimizer"], r["seed"]) for r in rows} == {("sgd", 0), ("sgd", 1), ("adam", 0), ("adam", 1)}
    for r in rows:
        summary = json.loads((sweep / r["run"] / "summary.json").read_text())
        assert r["test/acc"] == summary["test/acc"] and r["test/loss"] == summary["test/loss"]
        assert r["epochs_run"] == 2 and r["status"] == "completed"


def test_group_by_averages_seeds_mean_and_sample_std(sweep, capsys):
    rows = compare_json(capsys, str(sweep), "--group-by", "optimizer", "--metric", "test/loss,val/loss")
    assert [r["optimizer"] for r in rows] == ["sgd", "adam"] and all(r["runs"] == 2 for r in rows)
    runs = discover([sweep])
    for r in rows:
        losses = [x.summary["test/loss"] for x in runs if x.config["optimizer"] == r["optimizer"]]
        assert r["test/loss_mean"] == pytest.approx(sum(losses) / 2, rel=1e-12)
        assert r["test/loss_std"] == pytest.approx(abs(losses[0] - losses[1]) / math.sqrt(2), rel=1e-9)


def test_where_sort_and_metric_selection(sweep, capsys):
    rows = compare_json(capsys, str(sweep), "--where", "optimizer=adam", "--metric", "val/acc", "--sort", "test/loss")
    adam = {r.label for r in discover([sweep]) if r.config["optimizer"] == "adam"}
    assert len(adam) == 2 and {r["run"] for r in rows} == adam
    assert list(rows[0]) == ["run", "seed", "val/acc", "test/loss", "status"]  # sorting by a metric shows it
    assert rows[0]["test/loss"] <= rows[1]["test/loss"]  # a loss sorts smallest first
    desc = compare_json(capsys, str(sweep), "--sort", "test/loss:desc")
    assert [r["test/loss"] for r in desc] == sorted((r["test/loss"] for r in desc), reverse=True)
    assert len(compare_json(capsys, str(sweep), "--where", "optimizer.lr=1e-3")) == 2  # numeric match
    assert len(compare_json(capsys, str(sweep), "--where", "optimizer=sgd,adam", "--where", "seed=1")) == 2


def test_every_output_format(sweep, capsys):
    code, out, _ = compare(capsys, str(sweep), "--format", "csv", "--group-by", "optimizer")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert len(table) == 2 and {"optimizer", "runs", "test/acc_mean", "test/acc_std"} <= set(table[0])
    float(table[0]["test/acc_mean"])  # raw numbers, not "0.9 ± 0.1"

    code, out, _ = compare(capsys, str(sweep), "--format", "markdown")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("| run | optimizer | seed |") and len(lines) == 2 + 4
    assert "---:" in lines[1]

    code, out, _ = compare(capsys, str(sweep), "--group-by", "optimizer")
    assert code == 0 and "optimizer" in out and "±" in out and "sample std" in out

    code, out, _ = compare(capsys, str(sweep))
    assert code == 0 and all(f"{i} " in out for i in range(4)) and out.count("completed") == 4


@pytest.mark.slow
def test_cli_subcommand_end_to_end(sweep, tmp_path):
    out = run_cli("compare", str(sweep), "--format", "json", cwd=tmp_path)
    assert out.returncode == 0 and len(json.loads(out.stdout)) == 4
    assert "compare" in run_cli("--help", cwd=tmp_path).stdout


def test_plots_are_png_with_one_line_per_run_or_group(sweep, capsys, tmp_path):
    before = tree_state(sweep)
    png = tmp_path / "plots" / "curves.png"
    code, _, err = compare(capsys, str(sweep), "--plot", str(png), "--plot-metric", "val/loss")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(png).shape[2] in (3, 4)

    runs = discover([sweep])
    fig = plots.curves_figure([plots.Series(r.label, [r]) for r in runs], "val/loss")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 4 and ax.get_xlabel() == "epoch" and ax.get_ylabel() == "val/loss"
    assert "val/loss" in fig.get_suptitle() and len(ax.get_legend().get_texts()) == 4
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == [e["val/loss"] for e in runs[0].epochs]

    by_opt = {}
    for r in runs:
        by_opt.setdefault(r.config["optimizer"], []).append(r)
    fig = plots.curves_figure([plots.Series(k, v) for k, v in by_opt.items()], "val/loss")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2 and len(ax.collections) == 2  # a mean line and a std band per group
    sgd = by_opt["sgd"]
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx((sgd[0].epochs[0]["val/loss"] + sgd[1].epochs[0]["val/loss"]) / 2)

    fig = plots.schedule_figure([plots.Series(r.label, [r]) for r in runs])
    assert [len(a.get_lines()) for a in fig.axes] == [4, 4]
    assert {a.get_ylabel() for a in fig.axes} == {"learning rate (lr)", "batch size (batch_size)"}
    code, _, err = compare(capsys, str(sweep), "--group-by", "optimizer", "--plot", str(tmp_path / "s.png"),
                           "--plot-kind", "schedule")
    assert code == 0 and imread(tmp_path / "s.png").ndim == 3
    assert tree_state(sweep) == before  # compare never writes inside run folders


def test_plot_inside_a_run_folder_is_refused(sweep, capsys):
    run0 = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    code, out, err = compare(capsys, str(sweep), "--plot", str(run0 / "curves.png"))
    assert code == 2 and "inside run folder" in err and not (run0 / "curves.png").exists()
    assert out == ""  # refused before the table is printed
    code, out, err = compare(capsys, str(sweep), "--plot", "x.png", "--plot-metric", "test/acc")
    assert code == 2 and out == "" and "unknown name 'test/acc' in --plot-metric" in err and "val/acc" in err


# ---------------------------------------------------------------------------- bad input


def test_corrupt_and_incomplete_runs_are_listed_not_averaged(messy, capsys):
    code, out, err = compare(capsys, str(messy), "--format", "json")
    assert code == 0
    status = {r["run"]: r["status"] for r in json.loads(out)}
    assert status == {"ok0": "completed", "ok1": "completed", "truncated": "corrupt", "torn": "running",
                      "nosummary": "incomplete", "failed": "failed"}
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 3  # one line each: truncated summary, torn metrics line, missing summary
    assert any("truncated" in w and "summary.json: not valid JSON" in w for w in warnings)
    assert any("torn" in w and "last line is torn" in w for w in warnings)
    torn = next(r for r in json.loads(out) if r["run"] == "torn")
    first_epoch = json.loads((messy / "torn" / "metrics.jsonl").read_text().splitlines()[0])
    assert torn["epochs_run"] == 2 and read_run(messy / "torn", "torn").epochs == [first_epoch]

    code, out, err = compare(capsys, str(messy), "--format", "json", "--group-by", "dataset")
    (row,) = json.loads(out)
    ok = [json.loads((messy / n / "summary.json").read_text())["test/loss"] for n in ("ok0", "ok1")]
    assert row["runs"] == 2 and row["left out"] == 4
    assert row["test/loss_mean"] == pytest.approx(statistics.mean(ok), rel=1e-12)
    assert "4 run(s) not completed are left out of the averages" in err


def test_unknown_names_are_one_line_listing_valid_ones(sweep, capsys):
    for args in (["--sort", "test/acuracy"], ["--where", "optimiser=adam"], ["--group-by", "optimiser"],
                 ["--metric", "acc"]):
        code, out, err = compare(capsys, str(sweep), *args)
        assert code == 2 and out == "" and err.count("\n") == 1, (args, err)
        assert "unknown name" in err and "valid names:" in err
        assert ("test/acc" in err) == (args[0] != "--group-by")  # groups are config keys, not metrics
        assert ("optimizer" in err) == (args[0] != "--metric")  # metrics are not config keys
    code, _, err = compare(capsys, str(sweep), "--where", "optimizer")
    assert code == 2 and "key=value" in err
    code, _, err = compare(capsys, str(sweep), "--group-by", "optimizer", "--sort", "seed")
    assert code == 2 and "unknown name 'seed' in --sort" in err  # a grouped table has no seed column


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    code, out, err = compare(capsys, str(tmp_path / "empty"))
    assert code == 1 and out == "" and "no runs found under" in err and err.count("\n") == 1
    code, _, err = compare(capsys, str(tmp_path / "missing"))
    assert code == 1 and "does not exist" in err


def test_filter_that_matches_nothing_is_an_error(sweep, capsys):
    code, out, err = compare(capsys, str(sweep), "--where", "optimizer=rmsprop")
    assert code == 1 and out == "" and "none of the 4 runs" in err


# ---------------------------------------------------------------------------- hand-made runs


def write_run(d: Path, config: dict, summary: dict | None, epochs: list[dict], choices: dict | None = None) -> Path:
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if choices is not None:
        (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    return d


def test_grouping_arithmetic_against_a_hand_computation(tmp_path, capsys):
    accs = {"a": [0.9, 0.8, 0.7], "b": [0.5]}
    i = 0
    for opt, values in accs.items():
        for seed, acc in enumerate(values):
            write_run(tmp_path / f"r{i}", {"optimizer": {"lr": 0.1}, "seed": seed},
                      {"status": "completed", "test/acc": acc, "epochs": 1}, [{"epoch": 1, "val/acc": acc}],
                      choices={"optimizer": opt})
            i += 1
    rows = compare_json(capsys, str(tmp_path), "--group-by", "optimizer", "--metric", "test/acc")
    a, b = rows
    assert (a["optimizer"], a["runs"]) == ("a", 3) and a["test/acc_mean"] == pytest.approx(0.8)
    assert a["test/acc_std"] == pytest.approx(0.1)  # sample std: sqrt((0.01 + 0 + 0.01) / (3 - 1))
    assert (b["runs"], b["test/acc_mean"], b["test/acc_std"]) == (1, 0.5, None)  # one run: no spread
    code, out, _ = compare(capsys, str(tmp_path), "--group-by", "optimizer", "--metric", "test/acc", "--format", "markdown")
    assert "| a | 3 | 0.8 ± 0.1 |" in out and "| b | 1 | 0.5 |" in out
    assert Agg.of([]) == Agg(None, None, 0)


def test_interpolations_resolve_like_omegaconf():
    raw = {"epochs": 4, "batch_size": {"size": 64, "base_size": "${.size}"},
           "scheduler": {"T_max": "${epochs}", "tag": "e${epochs}-b${batch_size.size}"},
           "nested": {"deep": {"up": "${..x}"}, "x": 7}}
    out = resolve(raw)
    assert out["batch_size"]["base_size"] == 64 and out["scheduler"]["T_max"] == 4
    assert out["scheduler"]["tag"] == "e4-b64" and out["nested"]["deep"]["up"] == 7
    assert raw["batch_size"]["base_size"] == "${.size}"  # input untouched
    from omegaconf import OmegaConf

    assert out == OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    broken = resolve({"a": "${nope}"})  # neither resolver can: kept as written, no crash
    assert broken == {"a": "${nope}"}


def test_missing_config_and_list_valued_groups(tmp_path, capsys):
    write_run(tmp_path / "l1l2", {"regularizer": {"l1": {"weight": 1e-5}, "l2": {"weight": 1e-4}}, "seed": 0},
              {"status": "completed", "test/acc": 0.9}, [], choices={})
    write_run(tmp_path / "none", {"regularizer": {}, "seed": 0}, {"status": "completed", "test/acc": 0.8}, [],
              choices={"regularizer": "none"})
    (tmp_path / "noconf").mkdir()
    (tmp_path / "noconf" / "summary.json").write_text(json.dumps({"status": "completed", "test/acc": 0.1}))
    code, out, err = compare(capsys, str(tmp_path), "--format", "json", "--metric", "test/acc")
    rows = {r["run"]: r for r in json.loads(out)}
    assert code == 0 and rows["l1l2"]["regularizer"] == "l1+l2" and rows["none"]["regularizer"] == "none"
    assert rows["noconf"]["status"] == "corrupt" and ".hydra/config.yaml: missing" in err
    rows = compare_json(capsys, str(tmp_path), "--group-by", "regularizer", "--metric", "test/acc")
    assert sum(r["runs"] for r in rows) == 2  # the run without a config is not averaged anywhere


def stage_run(d: Path, seed: int, stages: list[tuple[str, int, float, float]]) -> Path:
    base = {"test/acc": 0.97, "size_bytes": 800_000, "params": 1000, "nonzeros": 1000, "latency_ms": 1.0}
    entries, prev = [], base
    for name, size, acc, lat in stages:
        after = {"test/acc": acc, "size_bytes": size, "params": 1000, "nonzeros": size // 1000, "latency_ms": lat,
                 "layers": {"0": {"sparsity": 0.5}}}
        entries.append({"name": name, "settings": {}, "before": prev, "after": after})
        prev = after
    return write_run(d, {"seed": seed}, {"status": "completed", "test/acc": 0.97, "stages": entries},
                     [{"epoch": 1, "val/acc": 0.9}])


def test_stage_results_columns_and_tradeoff_plot(tmp_path, capsys):
    stage_run(tmp_path / "a", 0, [("prune", 400_000, 0.96, 0.9), ("quantize", 100_000, 0.95, 0.5)])
    stage_run(tmp_path / "b", 1, [("prune", 400_000, 0.90, 0.9), ("quantize", 120_000, 0.89, 0.6)])
    rows = compare_json(capsys, str(tmp_path))
    assert list(rows[0])[-9:] == ["prune/test/acc", "prune/size_bytes", "prune/sparsity", "prune/latency_ms",
                                  "quantize/test/acc", "quantize/size_bytes", "quantize/sparsity",
                                  "quantize/latency_ms", "status"]
    a = next(r for r in rows if r["run"] == "a")
    assert a["quantize/size_bytes"] == 100_000 and a["prune/sparsity"] == pytest.approx(1 - 400 / 1000)

    pts = plots.tradeoff_points(discover([tmp_path]), "size")
    assert len(pts) == 6
    front = plots.pareto_front(pts)
    assert [p[2] for p in front] == ["a: quantize", "a: prune", "a: trained"]
    fig = plots.tradeoff_figure(discover([tmp_path]), "size")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 1 and len(ax.collections) == 3  # the front; trained/prune/quantize points
    assert ax.get_xlabel() == "size_bytes" and ax.get_ylabel() == "test accuracy"
    assert [tuple(xy) for xy in ax.get_lines()[0].get_xydata()] == [(p[0], p[1]) for p in front]
    png = tmp_path.parent / f"{tmp_path.name}-tradeoff.png"
    code, _, err = compare(capsys, str(tmp_path), "--plot", str(png), "--plot-kind", "tradeoff", "--plot-x", "latency")
    assert code == 0 and imread(png).ndim == 3
    os.remove(png)


def test_tradeoff_without_stages_is_an_error(sweep, capsys, tmp_path):
    code, out, err = compare(capsys, str(sweep), "--plot", str(tmp_path / "t.png"), "--plot-kind", "tradeoff")
    assert code == 1 and out == "" and "post-training stages" in err and not (tmp_path / "t.png").exists()


def test_runs_are_found_recursively_in_natural_order_without_entering_run_folders(tmp_path):
    for rel in ("sweep/10", "sweep/2", "single", "deep/a/b/run"):
        write_run(tmp_path / rel, {"seed": 0}, {"status": "completed"}, [])
    write_run(tmp_path / "single" / "nested", {"seed": 1}, {"status": "completed"}, [])  # inside a run: not a run
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    (tmp_path / "notes").mkdir()
    assert [r.label for r in discover([tmp_path])] == ["deep/a/b/run", "single", "sweep/2", "sweep/10"]
    assert [r.label for r in discover([tmp_path / "single"])] == ["single"]
