"""nnopt tune-lr: the DeepOBS protocol end to end on tiny data, reruns, isolation between jobs, exactness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from nnopt_cli import data
from nnopt_cli.cli.tune_lr import edge_warnings, format_table, parse
from nnopt_cli.cli.tune_lr import run as main
from nnopt_cli.store.folder import RunDir
from nnopt_cli.tune.lr_jobs import LrGrid, edge_of, lr_grid, pick_best, search_grid, stats, study_dir
from tests.conftest import TINY, compose_cfg, run_cli

JOB = [o for o in TINY if not o.startswith("epochs")] + ["epochs=1"]
ARGS = ["--optimizers", "sgd,adam", "--lrs", "2", "--seeds", "2"]


def study(tmp_path: Path, *extra: str) -> dict:
    main([*JOB, *ARGS, "--dir", str(tmp_path / "study"), *extra])
    return json.loads((tmp_path / "study" / "tune_lr.json").read_text())


def last_val_acc(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["val/acc"]


def test_grid_is_log_spaced_and_centred_on_the_default():
    g = lr_grid(0.01, 8, 100.0, None)
    assert g[0] == 0.001 and g[-1] == 0.1 and len(g) == 8
    ratios = [b / a for a, b in zip(g, g[1:], strict=False)]
    assert all(abs(r - 100 ** (1 / 7)) < 0.01 for r in ratios)  # equal steps on a log axis (3 digits)
    assert 0.01 in lr_grid(0.01, 5, 100.0, None)  # an odd grid holds the default itself
    assert lr_grid(0.5, 3, 100.0, (1e-3, 1e-1)) == [0.001, 0.01, 0.1]  # --lr-range: the same grid for all


def test_best_lr_counts_diverged_runs_as_worst_and_breaks_ties_to_the_smaller_lr():
    grid = [{"lr": 0.1, "metric": stats([0.8, 0.86])}, {"lr": 1.0, "metric": stats([0.95, None])},
            {"lr": 0.01, "metric": stats([0.85, 0.85])}, {"lr": 0.05, "metric": stats([0.85, 0.85])}]
    assert pick_best(grid, "max") == 0.01  # 1.0 had a diverged seed; 0.01 and 0.05 tie at 0.85
    assert pick_best(grid, "min") == 0.1
    assert pick_best([{"lr": 1.0, "metric": stats([None])}], "max") is None
    s = stats([0.5, 0.7, None])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(math.sqrt(0.02))


def peaked_at(peak: float, failed: tuple[float, ...] = ()):
    """A fabricated grid: the score falls with the distance to `peak` on a log axis; the LRs tried,
    in order, are kept on the function."""
    def evaluate(lr: float) -> dict:
        evaluate.tried.append(lr)
        score = None if lr in failed else -abs(math.log10(lr) - math.log10(peak))
        return {"lr": lr, "metric": stats([score])}
    evaluate.tried = []
    return evaluate


def scored(by_lr: dict[float, float | None]) -> list[dict]:
    return [{"lr": lr, "metric": stats([v])} for lr, v in by_lr.items()]


def test_edge_of_names_the_side_the_best_lr_sits_on():
    g = scored({0.001: 0.5, 0.01: 0.6, 0.1: 0.7})
    assert edge_of(g, 0.1) == "high" and edge_of(g, 0.001) == "low" and edge_of(g, 0.01) is None
    assert edge_of(scored({0.01: 0.5}), 0.01) is None and edge_of(scored({0.001: None, 0.01: None}), None) is None
    # every finished LR scored the same (a failed one aside): no side to extend to
    flat = scored({0.001: 0.14, 0.01: 0.14, 0.1: None})
    assert pick_best(flat, "max") == 0.001 and edge_of(flat, 0.001) == "flat"
    assert search_grid(LrGrid(0.001, 0.01, 2), lambda lr: scored({lr: 0.14})[0], "max", 4).added == []


def test_a_best_lr_on_the_grid_edge_is_reported_and_extend_walks_past_it():
    grid = LrGrid(0.001, 0.01, 3)
    assert grid.lrs() == [0.001, 0.00316, 0.01]
    # the optimum (0.3) lies far above the grid: without --extend the best is its largest LR
    s = search_grid(grid, peaked_at(0.3), "max")
    assert (s.best, s.edge, s.added) == (0.01, "high", [])
    # --extend: one point at a time at the grid's spacing, until the best is inside
    f = peaked_at(0.3)
    s = search_grid(grid, f, "max", extend_max=4)
    assert s.added == [0.0316, 0.1, 0.316, 1.0] and (s.best, s.edge) == (0.316, None)
    assert f.tried == [0.001, 0.00316, 0.01, *s.added]  # each LR evaluated once
    assert [e["lr"] for e in s.entries] == sorted(f.tried)
    # the limit reached with the best still on the edge: reported as such
    s = search_grid(grid, peaked_at(0.3), "max", extend_max=3)
    assert (s.best, s.edge, s.added) == (0.316, "high", [0.0316, 0.1, 0.316])
    # below the grid, and with --metric val/loss (min): the same walk downwards
    s = search_grid(grid, lambda lr: {"lr": lr, "metric": stats([abs(math.log10(lr) + 4)])}, "min", extend_max=4)
    assert (s.best, s.edge, s.added) == (0.0001, None, [0.000316, 0.0001, 0.0000316])


def test_a_diverged_largest_lr_keeps_the_best_inside_and_nothing_finished_extends_nothing():
    grid = LrGrid(0.001, 0.1, 3)
    s = search_grid(grid, peaked_at(1.0, failed=(0.1,)), "max", extend_max=4)
    assert (s.best, s.edge, s.added) == (0.01, None, [])  # the larger LR diverged: the optimum is below it
    s = search_grid(grid, peaked_at(1.0, failed=(0.001, 0.01, 0.1)), "max", extend_max=4)
    assert (s.best, s.edge, s.added) == (None, None, [])


def test_the_table_and_one_warning_line_name_each_optimizer_on_an_edge_or_tied():
    def opt(best, edge, lrs, added=()):
        s = stats([0.5])
        return {"default_lr": 0.01, "best_lr": best, "edge": edge, "added_lrs": list(added),
                "grid": [{"lr": lr, "added": lr in added} for lr in lrs], "tuned": {"val/acc": s, "test/acc": s},
                "default": {"val/acc": s, "test/acc": s}, "runs_tuning": len(lrs), "runs_all": len(lrs) + 1}

    result = {"protocol": {"metric": "val/acc", "seeds": 1, "extend_max": 2}, "optimizers": {
        "adam": opt(0.1, None, [0.001, 0.01, 0.1, 1.0], added=(0.1, 1.0)),
        "sgd": opt(0.0001, "low", [0.0001, 0.001, 0.01], added=(0.0001, 0.001)),
        "rmsprop": opt(0.001, "flat", [0.001, 0.01])}}
    table = format_table(result)
    assert "0.001..1 (+2)" in table and "0.1 (added)" in table
    assert "0.0001 (added, smallest tried)" in table and "0.001 (all tied)" in table
    assert edge_warnings(result) == [
        "sgd: the best LR 0.0001 is the smallest tried (0.0001..0.01 (+2)), so the optimum may be smaller; "
        "--extend added 2 LR(s) (--extend-max 2): rerun with a larger --extend-max",
        "rmsprop: every LR tried (0.001..0.01) gave the same val/acc, so the grid cannot tell them apart; move or "
        "widen it (--lr-range, --span), train longer, or pick by --metric val/loss"]


def test_extend_keeps_the_study_folder_so_the_runs_done_are_reused():
    base = ["epochs=1", "--optimizers", "sgd"]
    assert study_dir(parse(base)) == study_dir(parse([*base, "--extend", "--extend-max", "2"]))
    assert study_dir(parse(base)) != study_dir(parse(["epochs=2", "--optimizers", "sgd"]))


def test_forced_edge_warns_then_extend_moves_the_best_inside_reusing_every_run(tmp_path, capsys):
    # a grid far below adam's working LRs (1e-3 reaches full accuracy on this data in one epoch)
    args = [*JOB, "--optimizers", "adam", "--lr-range", "1e-5,1e-4", "--lrs", "2", "--seeds", "1",
            "--dir", str(tmp_path / "s")]
    main(args)
    first = json.loads((tmp_path / "s" / "tune_lr.json").read_text())["optimizers"]["adam"]
    out, err = capsys.readouterr()
    assert (first["best_lr"], first["edge"], first["added_lrs"]) == (0.0001, "high", [])
    assert "0.0001 (largest tried)" in out
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == ["nnopt: warning: adam: the best LR 0.0001 is the largest tried (1e-05..0.0001), so the "
                        "optimum may be larger; rerun the same command with --extend to try larger LRs "
                        "(runs already done are reused)"]

    main([*args, "--extend", "--extend-max", "4"])
    result = json.loads((tmp_path / "s" / "tune_lr.json").read_text())
    o = result["optimizers"]["adam"]
    out, err = capsys.readouterr()
    assert o["edge"] is None and o["best_lr"] > 0.0001 and o["best_lr"] in o["added_lrs"]
    assert o["added_lrs"][:2] == [0.001, 0.01]  # the grid's own spacing (x10), upwards
    lrs = [g["lr"] for g in o["grid"]]
    assert lrs == sorted(lrs) and min(lrs) < o["best_lr"] < max(lrs)
    assert [g["added"] for g in o["grid"]] == [lr in o["added_lrs"] for lr in lrs]
    # the best is the grid run with the highest final val/acc (ties: the smaller LR), read from its folder
    finals = {g["lr"]: last_val_acc(tmp_path / "s" / g["runs"][0]) for g in o["grid"]}
    assert o["best_lr"] == max(sorted(finals), key=lambda lr: finals[lr])
    # nothing ran twice: the first grid and the default LR's run (0.001, an added grid point too) were skipped
    assert result["jobs"]["skipped"] >= 3 and result["jobs"]["run"] == len(o["added_lrs"]) - 1
    assert f"{o['best_lr']:g} (added)" in out and "(+" in out and "warning" not in err


def test_protocol_end_to_end_then_a_rerun_skips_every_finished_run(tmp_path, capsys):
    result = study(tmp_path)
    root = tmp_path / "study"
    for opt in ("sgd", "adam"):
        o = result["optimizers"][opt]
        runs = {p.parent for p in (root / opt).rglob("summary.json")}
        grid_dirs = [root / g["runs"][0] for g in o["grid"]]
        assert len(grid_dirs) == 2 and o["runs_tuning"] == 2
        # the best LR is the grid run with the highest final val/acc, read back from its folder
        best = max(grid_dirs, key=last_val_acc)
        assert o["best_lr"] == yaml.safe_load((best / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"]
        # tuned and default over the 2 seeds, each an ordinary run folder with that LR in its config
        for group, lr in (("tuned", o["best_lr"]), ("default", o["default_lr"])):
            g = o[group]
            assert g["lr"] == lr and len(g["runs"]) == 2
            values = [last_val_acc(root / d) for d in g["runs"]]
            assert g["val/acc"]["values"] == values and g["val/acc"]["mean"] == pytest.approx(sum(values) / 2)
            tests = [json.loads((root / d / "summary.json").read_text())["test/acc"] for d in g["runs"]]
            assert g["test/acc"]["values"] == tests
        assert o["runs_all"] == len(runs)  # distinct runs on disk (a shared (lr, seed) ran once)
    assert result["jobs"]["run"] == sum(o["runs_all"] for o in result["optimizers"].values())
    out = capsys.readouterr().out
    assert "sgd" in out and "tuned lr" in out and "runs tuning/all" in out

    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")}
    again = study(tmp_path)
    assert again["jobs"]["run"] == 0 and again["jobs"]["skipped"] == result["jobs"]["run"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")} == mtimes
    assert again["optimizers"] == result["optimizers"]


@pytest.mark.parametrize("every", [None, 1])
def test_a_cut_run_is_resumed_or_redone_by_the_rerun(tmp_path, capsys, every):
    extra = [] if every is None else [f"checkpoint.every={every}"]
    study(tmp_path, *extra)
    run = tmp_path / "study" / "adam" / "lr=0.001" / "seed=1"
    # jobs checkpoint only when stopped by a signal, unless checkpoint.every says otherwise
    assert (run / "checkpoint.pt").exists() == (every is not None)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))  # killed mid-run
    again = study(tmp_path, *extra)
    assert again["jobs"]["run"] == 1 and again["optimizers"]["adam"]["default"]["status"] == ["completed"] * 2
    resumed = json.loads((run / "summary.json").read_text()).get("resumed_from_epoch")
    assert resumed == (1 if every else None)  # from its checkpoint, or from scratch without one


def test_a_job_that_mutates_its_data_in_place_does_not_change_the_next(tmp_path, monkeypatch, capsys):
    clean = study(tmp_path / "clean")
    seen: list[data.Splits] = []
    to = data.Splits.to

    def keep(self, device):
        moved = to(self, device)
        seen.append(moved)
        return moved

    def save_and_corrupt(self, model, name="model.pt"):
        if name == "model.pt":  # the run's end: trash the tensors it trained and tested on
            for s in seen:
                for t in (s.train_x, s.val_x, s.test_x):
                    t.mul_(0).add_(7)
                s.train_y.zero_()
        return save(self, model, name)

    save = RunDir.save_model
    monkeypatch.setattr(data.Splits, "to", keep)
    monkeypatch.setattr(RunDir, "save_model", save_and_corrupt)
    dirty = study(tmp_path / "dirty")
    assert len(seen) == dirty["jobs"]["run"] > 1 and len({id(s.train_x) for s in seen}) == len(seen)
    assert dirty["optimizers"] == clean["optimizers"]


def test_keep_loaded_hands_out_copies():
    kw = dict(val_size=32, n_train=128, n_test=16)
    fresh = data.load_dataset("synthetic", **kw)
    with data.keep_loaded():
        a = data.load_dataset("synthetic", **kw)
        a.train_x.zero_()
        a.train_y.fill_(3)
        b = data.load_dataset("synthetic", **kw)
        c = data.load_dataset("synthetic", **{**kw, "split_seed": 1})
    assert torch.equal(b.train_x, fresh.train_x) and torch.equal(b.train_y, fresh.train_y)
    assert b.train_x.data_ptr() != a.train_x.data_ptr() and not torch.equal(c.val_x, fresh.val_x)
    assert data._KEPT is None  # nothing is kept after the block


def metrics_without_times(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


def test_a_job_gives_the_same_metrics_bit_for_bit_as_a_separate_run(tmp_path, capsys):
    from nnopt_cli.run.recipe import RunContext, train

    result = study(tmp_path)
    run = tmp_path / "study" / result["optimizers"]["adam"]["tuned"]["runs"][1]
    overrides = [line[2:] for line in (run / ".hydra" / "overrides.yaml").read_text().splitlines()]
    summary = train(compose_cfg(*overrides, tiny=False), RunContext(tmp_path / "alone"))
    assert metrics_without_times(tmp_path / "alone") == metrics_without_times(run)
    job = json.loads((run / "summary.json").read_text())
    assert (summary["test/acc"], summary["test/loss"], summary["config_sha"]) == (
        job["test/acc"], job["test/loss"], job["config_sha"])


@pytest.mark.slow
def test_the_cli_study_matches_separate_nnopt_train_runs(tmp_path):
    r = run_cli("tune-lr", *JOB, "--optimizers", "momentum", "--lrs", "2", "--seeds", "1", "--dir", "s",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "momentum" in r.stdout and (tmp_path / "s" / "tune_lr.json").exists()
    run = next((tmp_path / "s" / "momentum").glob("lr=*/seed=0"))
    overrides = [line[2:] for line in (run / ".hydra" / "overrides.yaml").read_text().splitlines()]
    r = run_cli("train", *overrides, "hydra.run.dir=alone", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert metrics_without_times(tmp_path / "alone") == metrics_without_times(run)
    r = run_cli("compare", "s", "--group-by", "optimizer,optimizer.lr", cwd=tmp_path)
    assert r.returncode == 0 and "momentum" in r.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--lrs", "0"], "--lrs must be >= 1"),
    (["--optimizers", "sgd,nope"], "nope"),
    (["--lr-range", "1,0.1"], "0 < LO < HI"),
    (["--span", "1"], "--span"),
    (["seed=3"], "not allowed"),
    (["optimizer=adam"], "not allowed"),
    (["optimizer.lr=0.1"], "not allowed"),
    (["--bogus"], "unrecognized arguments"),
    (["epochs=0"], "epochs"),
    (["optimizer.lrr=0.1"], "no such key"),
    (["dataset=nope"], "dataset"),
    (["--extend-max", "2"], "--extend-max needs --extend"),
    (["--extend", "--extend-max", "0"], "--extend-max must be >= 1"),
    (["--extend", "--lrs", "1"], "--extend needs --lrs >= 2"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main([*JOB, "--dir", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()  # nothing ran


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(o in out for o in ("--optimizers", "--lrs", "--seeds", "--lr-range", "--dir", "--extend",
                                                 "--extend-max"))
