"""`nnopt compare --stats/--target/--baseline` and the deciding plots on hand-made run folders with
known numbers: time to target reached, never reached, diverged, at different budgets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml
from matplotlib.image import imread

from nnopt_cli.cli.compare import run as compare_main
from nnopt_cli.compare.discover import read_run
from nnopt_cli.compare.evals import eval_rows, parse_target, time_to_target

STEPS, BATCH = 100, 32  # optimizer steps per epoch and batch size of the hand-made runs


def compare(capsys, *args: str) -> tuple[int, str, str]:
    try:
        compare_main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def compare_json(capsys, *args: str) -> tuple[list[dict], str]:
    code, out, err = compare(capsys, *args, "--format", "json")
    assert code == 0, err
    return json.loads(out), err


def write_run(d: Path, opt: str, seed: int, val_acc: list[float], *, status: str = "completed",
              epochs: int | None = None, test_acc: float | None = None, lr: float = 0.001,
              dataset: str = "mnist", counters: bool = True) -> Path:
    """A run folder as `nnopt train` writes it: one metrics.jsonl row per epoch with cumulative
    counters (or, counters=False, the older per-epoch `steps` and `time_s`)."""
    (d / ".hydra").mkdir(parents=True)
    epochs = epochs or len(val_acc)
    config = {"dataset": {"name": dataset}, "model": {"hidden": [8]}, "optimizer": {"lr": lr}, "seed": seed,
              "epochs": epochs}
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"dataset": dataset, "model": "mlp", "optimizer": opt}
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    rows = []
    for e, acc in enumerate(val_acc, start=1):
        row = {"epoch": e, "val/acc": acc, "val/loss": 1.0 - acc}
        if counters:
            row.update(total_steps=e * STEPS, samples_seen=e * STEPS * BATCH, train_s=1.5 * e)
        else:
            row.update(steps=STEPS, time_s=2.0)
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"status": status, "epochs": len(val_acc),
               "test/acc": test_acc if test_acc is not None else val_acc[-1]}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.fixture
def target_runs(tmp_path) -> Path:
    """adam reaches val/acc 0.97 at steps 200, 100, 300; sgd never, diverges, and at 200."""
    for seed, accs in enumerate([[0.95, 0.975, 0.98], [0.97, 0.98, 0.985], [0.96, 0.965, 0.972]]):
        write_run(tmp_path / f"adam{seed}", "adam", seed, accs)
    write_run(tmp_path / "sgd0", "sgd", 0, [0.90, 0.95, 0.96])
    write_run(tmp_path / "sgd1", "sgd", 1, [0.90, 0.971], status="diverged", epochs=3)  # reached, then NaN
    write_run(tmp_path / "sgd2", "sgd", 2, [0.93, 0.971, 0.975])
    return tmp_path


def test_time_to_target_per_run_reached_never_and_diverged(target_runs, capsys):
    rows, _ = compare_json(capsys, str(target_runs), "--target", "val/acc=0.97")
    by = {r["run"]: r for r in rows}
    assert (by["adam0"]["target_reached"], by["adam0"]["target_steps"]) == ("yes", 200)
    assert by["adam0"]["target_samples"] == 200 * BATCH and by["adam0"]["target_seconds"] == 3.0
    assert by["adam0"]["target_epochs"] == 2 and by["adam1"]["target_steps"] == 100
    assert (by["sgd0"]["target_reached"], by["sgd0"]["target_steps"]) == ("never", None)  # shown, not dropped
    assert (by["sgd1"]["target_reached"], by["sgd1"]["target_steps"]) == ("diverged", None)
    assert len(rows) == 6
    code, out, _ = compare(capsys, str(target_runs), "--target", "val/acc=0.97", "--format", "markdown")
    assert code == 0 and "val/acc >= 0.97" in out and "| never |" in out and "| diverged |" in out


def test_time_to_target_per_group_median_ci_and_counts(target_runs, capsys):
    rows, _ = compare_json(capsys, str(target_runs), "--group-by", "optimizer", "--target", "val/acc=0.97")
    adam, sgd = rows
    assert (adam["optimizer"], adam["target_reached"], adam["target_steps"]) == ("adam", "3/3", 200)
    assert adam["target_steps_lo"] >= 100 and adam["target_steps_hi"] <= 300
    assert adam["target_steps_lo"] < adam["target_steps_hi"]
    # sgd: the diverged run counts as never; median of (inf, inf, 200) is inf (null in json)
    assert (sgd["runs"], sgd["target_reached"], sgd["target_steps"]) == (2, "1/3", None)


def test_evals_jsonl_gives_finer_resolution_and_old_rows_fall_back(tmp_path):
    d = write_run(tmp_path / "a", "adam", 0, [0.95, 0.975, 0.98])
    evals = [{"epoch": 1, "total_steps": 50, "samples_seen": 1600, "train_s": 0.7, "val/acc": 0.96},
             {"epoch": 1, "total_steps": 100, "samples_seen": 3200, "train_s": 1.5, "val/acc": 0.95},
             {"epoch": 2, "total_steps": 150, "samples_seen": 4800, "train_s": 2.2, "val/acc": 0.972}]
    (d / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals) + '{"epoch": 2, "tot')
    run = read_run(d, "a")
    assert eval_rows(run) == evals  # the torn last line is dropped
    t = time_to_target(run, parse_target("val/acc=0.97"))
    assert t == {"epochs": 2, "steps": 150, "samples": 4800, "seconds": 2.2}
    old = read_run(write_run(tmp_path / "old", "adam", 0, [0.95, 0.975], counters=False), "old")
    assert time_to_target(old, parse_target("val/acc>=0.97")) == {"epochs": 2, "steps": 200, "samples": None,
                                                                  "seconds": 4.0}
    assert time_to_target(old, parse_target("val/loss=0.02")) == {"epochs": math.inf, "steps": math.inf,
                                                                  "samples": None, "seconds": math.inf}
    assert time_to_target(old, parse_target("val/loss=0.06"))["steps"] == 100  # loss: lower is better


def test_target_parsing_and_bad_values(target_runs, capsys):
    t = parse_target("mnist1d:val/loss<=0.3")
    assert (t.dataset, t.metric, t.value, t.mode) == ("mnist1d", "val/loss", 0.3, "min")
    assert parse_target("val/acc=0.97").mode == "max" and parse_target("val/loss=0.1").mode == "min"
    for args, words in ((["--target", "val/acc"], "METRIC=VALUE"),
                        (["--target", "val/acc=high"], "not a number"),
                        (["--target", "val/acx=0.9"], "unknown name 'val/acx' in --target"),
                        (["--stats"], "--group-by"), (["--baseline", "adam"], "--group-by"),
                        (["--group-by", "optimizer", "--baseline", "rmsprop"], "valid: adam, sgd"),
                        (["--plot", str(target_runs / "x.png"), "--plot-kind", "profile",
                          "--group-by", "optimizer"], "needs a --target")):
        code, out, err = compare(capsys, str(target_runs), *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and words in err, (args, err)


def test_stats_iqm_column_against_scipy(tmp_path, capsys):
    accs = [0.971, 0.968, 0.975, 0.5, 0.973]  # one bad seed: the IQM ignores it, the mean does not
    for seed, acc in enumerate(accs):
        write_run(tmp_path / f"r{seed}", "adam", seed, [acc], test_acc=acc)
    rows, _ = compare_json(capsys, str(tmp_path), "--group-by", "optimizer", "--stats",
                           "--metric", "test/acc", "--bootstrap", "2000")
    (row,) = rows
    assert row["test/acc_mean"] == pytest.approx(np.mean(accs))
    assert row["test/acc_iqm"] == pytest.approx(scipy.stats.trim_mean(accs, 0.25))
    assert row["test/acc_iqm"] == pytest.approx((0.971 + 0.973 + 0.968) / 3)  # 1 cut from each end
    assert row["test/acc_iqm_lo"] <= row["test/acc_iqm"] <= row["test/acc_iqm_hi"]
    again, _ = compare_json(capsys, str(tmp_path), "--group-by", "optimizer", "--stats",
                            "--metric", "test/acc", "--bootstrap", "2000")
    assert again == rows  # seeded


@pytest.fixture
def baseline_runs(tmp_path) -> Path:
    tests = {"adam": [0.980, 0.981, 0.979, 0.982, 0.983], "sgd": [0.950, 0.951, 0.949, 0.952, 0.953],
             "momentum": [0.981, 0.978, 0.983, 0.980, 0.984]}
    for opt, values in tests.items():
        for seed, acc in enumerate(values):
            write_run(tmp_path / f"{opt}{seed}", opt, seed, [acc], test_acc=acc)
    return tmp_path


def test_baseline_probability_of_improvement_p_values_and_verdicts(baseline_runs, capsys):
    rows, _ = compare_json(capsys, str(baseline_runs), "--group-by", "optimizer", "--baseline", "adam",
                           "--metric", "test/acc", "--bootstrap", "2000")
    by = {r["optimizer"]: r for r in rows}
    assert by["adam"]["verdict"] == "baseline" and by["adam"]["P(better)"] is None
    sgd = by["sgd"]
    assert sgd["P(better)"] == 0.0 and (sgd["P(better)_lo"], sgd["P(better)_hi"]) == (0.0, 0.0)
    assert sgd["p_mw"] == pytest.approx(2 / 252)  # exact: the most extreme of C(10, 5) splits, both tails
    assert sgd["p_perm"] == pytest.approx(2 / 252) and sgd["verdict"] == "worse"
    mom = by["momentum"]
    adam = [0.980, 0.981, 0.979, 0.982, 0.983]
    mine = [0.981, 0.978, 0.983, 0.980, 0.984]
    u = scipy.stats.mannwhitneyu(mine, adam, alternative="greater").statistic
    assert mom["P(better)"] == pytest.approx(u / 25)
    assert mom["p_mw"] == pytest.approx(scipy.stats.mannwhitneyu(mine, adam, alternative="two-sided").pvalue)
    assert mom["verdict"] == "not resolved" and mom["P(better)_lo"] < 0.5 < mom["P(better)_hi"]
    code, out, _ = compare(capsys, str(baseline_runs), "--group-by", "optimizer", "--baseline", "adam",
                           "--metric", "test/acc", "--format", "markdown", "--bootstrap", "500")
    assert "not resolved" in out and "cannot tell the two apart" in out


def test_baseline_on_a_loss_counts_lower_as_better(baseline_runs, capsys):
    rows, _ = compare_json(capsys, str(baseline_runs), "--group-by", "optimizer",
                           "--baseline", "optimizer=sgd", "--metric", "val/loss", "--bootstrap", "500")
    by = {r["optimizer"]: r for r in rows}
    # every adam run has a lower loss than every sgd run
    assert by["adam"]["P(better)"] == 1.0 and by["adam"]["verdict"] == "better"


def test_different_epochs_are_different_workloads_not_averaged_together(tmp_path, capsys):
    write_run(tmp_path / "a", "adam", 0, [0.9, 0.95])
    write_run(tmp_path / "b", "sgd", 0, [0.9, 0.95, 0.96, 0.97])
    write_run(tmp_path / "c", "sgd", 1, [0.9, 0.93])
    rows, err = compare_json(capsys, str(tmp_path), "--group-by", "optimizer", "--metric", "test/acc")
    assert {(r["epochs"], r["optimizer"], r["runs"], r["test/acc_mean"]) for r in rows} == {
        (2, "adam", 1, 0.95), (4, "sgd", 1, 0.97), (2, "sgd", 1, 0.93)}
    assert err == ""  # each budget is its own row: nothing to warn about


def test_equal_epochs_different_steps_warn(tmp_path, capsys):
    write_run(tmp_path / "a", "adam", 0, [0.9, 0.95])
    b = write_run(tmp_path / "b", "sgd", 0, [0.9, 0.95])
    lines = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    for row in lines:
        row["total_steps"] *= 2  # half the batch size: twice the steps
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    _, err = compare_json(capsys, str(tmp_path), "--group-by", "optimizer")
    assert "different budgets (total_steps: optimizer=adam 200, optimizer=sgd 400)" in err


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(path).shape[2] in (3, 4)


def test_lr_sensitivity_plot(tmp_path, capsys):
    runs = tmp_path / "runs"
    for opt, best in (("adam", 1e-3), ("sgd", 1e-1)):
        for lr in (1e-4, 1e-3, 1e-2, 1e-1):
            for seed in (0, 1):
                acc = 0.97 - 0.02 * abs(math.log10(lr / best)) + 0.001 * seed
                write_run(runs / f"{opt}-{lr}-{seed}", opt, seed, [acc], test_acc=acc, lr=lr)
    png = tmp_path / "lr.png"
    code, _, err = compare(capsys, str(runs), "--plot", str(png), "--plot-kind", "lr", "--metric", "test/acc")
    assert code == 0 and is_png(png), err
    from nnopt_cli.compare import decide_plots
    from nnopt_cli.compare.discover import discover

    fig = decide_plots.lr(discover([runs]), [], "test/acc")
    ax = fig.axes[0]
    series = [line for line in ax.lines if not line.get_label().startswith("_")]  # not the LR marks
    assert ax.get_xscale() == "log" and len(series) == 2
    adam = next(line for line in series if "adam" in line.get_label())
    assert list(adam.get_xdata()) == [1e-4, 1e-3, 1e-2, 1e-1]
    assert adam.get_ydata()[1] == pytest.approx(0.9705)  # mean of seeds 0 and 1 at its best LR


def test_target_bars_plot(target_runs, tmp_path, capsys):
    png = tmp_path / "target.png"
    code, _, err = compare(capsys, str(target_runs), "--group-by", "optimizer", "--target", "val/acc=0.97",
                           "--plot", str(png), "--plot-kind", "target")
    assert code == 0 and is_png(png), err


def test_performance_profile_plot_and_score_on_two_workloads(tmp_path, capsys):
    runs = tmp_path / "runs"
    # medians of steps to val/acc 0.97: mnist adam 200, sgd never; mnist1d adam 400, sgd 200
    curves = {("mnist", "adam"): [0.9, 0.975, 0.98, 0.98], ("mnist", "sgd"): [0.9, 0.92, 0.93, 0.94],
              ("mnist1d", "adam"): [0.5, 0.6, 0.7, 0.971], ("mnist1d", "sgd"): [0.6, 0.972, 0.98, 0.98]}
    for (ds, opt), accs in curves.items():
        for seed in (0, 1, 2):
            write_run(runs / f"{ds}-{opt}-{seed}", opt, seed, accs, dataset=ds)
    png = tmp_path / "profile.png"
    code, _, err = compare(capsys, str(runs), "--group-by", "optimizer", "--target", "val/acc=0.97",
                           "--plot", str(png), "--plot-kind", "profile")
    assert code == 0 and is_png(png), err
    # ratios adam [1, 2], sgd [inf, 1]: by hand adam (3 + 2) / 2 / 3, sgd (0 + 3) / 2 / 3
    assert "score: optimizer=adam 0.833, optimizer=sgd 0.500" in err
    code, _, err = compare(capsys, str(runs), "--group-by", "optimizer", "--target", "mnist:val/acc=0.97",
                           "--target", "mnist1d:val/acc=0.5", "--plot", str(png), "--plot-kind", "profile")
    assert code == 0 and "score: optimizer=adam 1.000, optimizer=sgd 0.500" in err  # mnist1d: both r = 1


def test_runs_without_step_counters_count_as_reached_and_hide_unknown_columns(tmp_path, capsys):
    for seed in (0, 1):
        write_run(tmp_path / f"old{seed}", "adam", seed, [0.95, 0.975], counters=False)
    rows, _ = compare_json(capsys, str(tmp_path), "--group-by", "optimizer", "--target", "val/acc=0.97")
    (row,) = rows
    assert row["target_reached"] == "2/2" and row["target_steps"] == 200 and row["target_seconds"] == 4.0
    assert "target_samples" not in row  # no run recorded samples_seen
    code, _, err = compare(capsys, str(tmp_path), "--group-by", "optimizer", "--target", "val/acc=0.97",
                           "--target-time", "samples", "--plot", str(tmp_path / "t.png"),
                           "--plot-kind", "target")
    assert code == 2 and "--target-time epochs" in err


def test_groups_over_two_workloads_are_formed_and_compared_within_each(tmp_path, capsys):
    accs = {"mnist": [0.98, 0.981, 0.979], "mnist1d": [0.60, 0.62, 0.61]}
    for ds, values in accs.items():
        for seed, acc in enumerate(values):
            write_run(tmp_path / f"{ds}-adam{seed}", "adam", seed, [acc], test_acc=acc, dataset=ds)
            write_run(tmp_path / f"{ds}-sgd{seed}", "sgd", seed, [acc - 0.01], test_acc=acc - 0.01,
                      dataset=ds)
    rows, _ = compare_json(capsys, str(tmp_path), "--group-by", "optimizer", "--stats", "--metric",
                           "test/acc", "--baseline", "adam", "--bootstrap", "1000")
    from nnopt_cli.compare import stats

    by = {(r["dataset"], r["optimizer"]): r for r in rows}
    assert len(by) == 4
    for ds, values in accs.items():
        adam, sgd = by[(ds, "adam")], by[(ds, "sgd")]
        assert (adam["test/acc_iqm_lo"], adam["test/acc_iqm_hi"]) == pytest.approx(
            stats.bootstrap_ci(values, "iqm", 1000, 0))  # this workload's runs only
        mine = [v - 0.01 for v in values]  # sgd: against adam on its own workload only
        u = scipy.stats.mannwhitneyu(mine, values, alternative="two-sided")
        assert (adam["verdict"], sgd["P(better)"], sgd["p_mw"]) == ("baseline", u.statistic / 9, u.pvalue)
        assert sgd["verdict"] == "not resolved"  # 3 seeds each: the exact test cannot go below p = 0.1


def test_a_group_whose_key_is_unset_is_named_null_as_baseline(tmp_path, capsys):
    """init_from=null (a fresh start) against runs started from a parent: `--baseline null`."""
    for parent, values in ((None, [0.50, 0.51, 0.52, 0.53, 0.54]), ("outputs/parent", [0.7, 0.71, 0.72, 0.73, 0.74])):
        for seed, acc in enumerate(values):
            d = write_run(tmp_path / f"{parent is None}{seed}", "adam", seed, [acc], test_acc=acc)
            config = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
            (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "init_from": parent}))
    rows, _ = compare_json(capsys, str(tmp_path), "--group-by", "init_from", "--baseline", "null",
                           "--metric", "test/acc", "--bootstrap", "500")
    by = {r["init_from"]: r for r in rows}
    assert by[None]["verdict"] == "baseline" and by["outputs/parent"]["verdict"] == "better"
    code, _, err = compare(capsys, str(tmp_path), "--group-by", "init_from", "--baseline", "nothing")
    assert code != 0 and "valid: " in err and "null" in err
