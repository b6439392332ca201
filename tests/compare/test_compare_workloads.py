"""`nnopt compare` over folders holding a run twice or runs on several workloads, and the seeds a
difference not resolved would need: hand-made run folders with known numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml

from nnopt_cli.compare import decide_plots, plots, stats
from nnopt_cli.compare.discover import discover
from tests.compare.test_compare import stage_run
from tests.compare.test_compare_stats import compare, compare_json, write_run

ACCS = {("mnist", "adam"): [[0.90, 0.975, 0.980], [0.97, 0.978, 0.982], [0.93, 0.960, 0.971]],
        ("mnist", "sgd"): [[0.90, 0.950, 0.965], [0.91, 0.968, 0.972], [0.92, 0.940, 0.950]],
        ("mnist1d", "adam"): [[0.50, 0.600, 0.640], [0.52, 0.610, 0.620], [0.55, 0.650, 0.660]],
        ("mnist1d", "sgd"): [[0.40, 0.600, 0.610], [0.45, 0.550, 0.580], [0.42, 0.590, 0.630]]}


def edit(run: Path, name: str, change) -> None:
    """Rewrite a run's JSON or YAML file through `change(data)`."""
    path = run / name
    data = yaml.safe_load(path.read_text()) if name.endswith(".yaml") else json.loads(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))


def workload_runs(root: Path) -> Path:
    """Three seeds of adam and sgd on MNIST and on MNIST-1D (ACCS: val/acc per epoch, test = last)."""
    for (ds, opt), curves in ACCS.items():
        for seed, accs in enumerate(curves):
            d = write_run(root / f"{ds}-{opt}{seed}", opt, seed, accs, dataset=ds, lr=0.01 if opt == "sgd" else 0.001)
            edit(d, "summary.json", lambda s: s.update(finished_at="2026-01-01T10:00:00+0000"))
    return root


@pytest.fixture
def with_duplicates(tmp_path) -> tuple[Path, Path]:
    """(runs with two duplicate sets, the same runs without the duplicates)."""
    runs = workload_runs(tmp_path / "runs")
    # mnist-adam0 rerun into a second folder, on another device and thread count, finishing later with
    # other numbers (a nondeterministic kernel): the rerun is kept, the first one dropped
    rerun = runs / "rerun" / "mnist-adam0"
    shutil.copytree(runs / "mnist-adam0", rerun)
    edit(rerun, ".hydra/config.yaml", lambda c: c.update(device="cuda", threads=4))
    edit(rerun, "summary.json", lambda s: s.update({"finished_at": "2026-01-02T10:00:00+0000", "test/acc": 0.95}))
    rows = (rerun / "metrics.jsonl").read_text().splitlines()
    (rerun / "metrics.jsonl").write_text(rows[0] + "\n" + rows[1].replace("0.975", "0.965") + "\n" + rows[2] + "\n")
    shutil.copytree(runs / "mnist1d-sgd1", runs / "copy-of-mnist1d-sgd1")  # same finished_at: the later file
    os_utime_later(runs / "copy-of-mnist1d-sgd1" / "summary.json")
    dedup = tmp_path / "dedup"
    shutil.copytree(runs, dedup, ignore=lambda d, names: ["mnist-adam0", "mnist1d-sgd1"] if d == str(runs) else [])
    return runs, dedup


def os_utime_later(path: Path) -> None:
    import os

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


# ---------------------------------------------------------------------------- duplicates


def test_a_run_found_twice_counts_once_in_every_statistic(with_duplicates, capsys, monkeypatch):
    runs, dedup = with_duplicates
    figures: list = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig))
    args = ["--group-by", "optimizer", "--metric", "test/acc", "--stats", "--baseline", "sgd",
            "--target", "val/acc=0.96", "--bootstrap", "1000"]
    got, err = compare_json(capsys, str(runs), *args)
    want, want_err = compare_json(capsys, str(dedup), *args)
    assert got == want and want_err == ""  # every mean, std, IQM, CI, P(better), p-value, time to target
    warnings = err.splitlines()
    assert len(warnings) == 2, err  # one line per duplicate set
    assert any(w.endswith("2 runs of the same experiment (same config and seed): kept rerun/mnist-adam0 (the "
                          "most recent completed one), not counted again: mnist-adam0") for w in warnings)
    assert any("kept copy-of-mnist1d-sgd1" in w and w.endswith("mnist1d-sgd1") for w in warnings)
    mnist_adam = next(r for r in got if (r["dataset"], r["optimizer"]) == ("mnist", "adam"))
    assert mnist_adam["runs"] == 3
    assert mnist_adam["test/acc_mean"] == pytest.approx(np.mean([0.95, 0.982, 0.971]))  # the rerun's 0.95

    for kind, extra in (("profile", ["--target", "val/acc=0.96"]), ("lr", []), ("curves", [])):
        figures.clear()
        scores = []
        for folder in (runs, dedup):
            code, _, err = compare(capsys, str(folder), "--group-by", "optimizer", "--plot", "p.png",
                                   "--plot-kind", kind, *extra)
            assert code == 0, err
            scores.append([line for line in err.splitlines() if "score" in line])
        a, b = (fig.axes[0] for fig in figures)
        assert [(li.get_label(), li.get_xydata().tolist()) for li in a.lines] == \
               [(li.get_label(), li.get_xydata().tolist()) for li in b.lines], kind
        assert scores[0] == scores[1]


def test_runs_differing_only_in_seed_or_experiment_keys_are_not_duplicates(tmp_path, capsys):
    a = write_run(tmp_path / "a", "adam", 0, [0.9])
    b = shutil.copytree(a, tmp_path / "b")
    edit(b, ".hydra/config.yaml", lambda c: c.update(seed=1))
    c = shutil.copytree(a, tmp_path / "c")
    edit(c, ".hydra/config.yaml", lambda c: c["model"].update(hidden=[16]))
    d = shutil.copytree(a, tmp_path / "d")
    edit(d, "summary.json", lambda s: s.update(status="failed"))  # never counted: not a duplicate either
    rows, err = compare_json(capsys, str(tmp_path))
    assert len(rows) == 4 and "same experiment" not in err


# ---------------------------------------------------------------------------- workloads


def test_group_by_over_two_workloads_groups_within_each(tmp_path, capsys):
    runs = workload_runs(tmp_path)
    rows, err = compare_json(capsys, str(runs), "--group-by", "optimizer", "--metric", "test/acc")
    assert sorted((r["dataset"], r["optimizer"], r["runs"]) for r in rows) == [
        ("mnist", "adam", 3), ("mnist", "sgd", 3), ("mnist1d", "adam", 3), ("mnist1d", "sgd", 3)]
    for r in rows:
        values = [c[-1] for c in ACCS[(r["dataset"], r["optimizer"])]]
        assert r["test/acc_mean"] == pytest.approx(np.mean(values))
        assert r["test/acc_std"] == pytest.approx(np.std(values, ddof=1))
    code, out, _ = compare(capsys, str(runs), "--group-by", "optimizer", "--metric", "test/acc", "--format", "markdown")
    assert code == 0 and "within each workload (dataset, model, their settings, epochs): dataset added to --group-by" in out
    rows, _ = compare_json(capsys, str(runs), "--metric", "test/acc")  # ungrouped: one row per run
    assert len(rows) == 12 and list(rows[0])[:4] == ["run", "dataset", "optimizer", "seed"]


def test_workload_settings_and_epochs_split_groups_too(tmp_path, capsys):
    for seed in (0, 1):
        edit(write_run(tmp_path / f"small{seed}", "adam", seed, [0.8, 0.9]), ".hydra/config.yaml",
             lambda c: c["dataset"].update(train_size=1000))
        edit(write_run(tmp_path / f"large{seed}", "adam", seed, [0.85, 0.95]), ".hydra/config.yaml",
             lambda c: c["dataset"].update(train_size=5000))
        write_run(tmp_path / f"long{seed}", "adam", seed, [0.8, 0.9, 0.95, 0.96])
        edit(tmp_path / f"long{seed}", ".hydra/config.yaml", lambda c: c["dataset"].update(train_size=5000))
    rows, err = compare_json(capsys, str(tmp_path), "--group-by", "optimizer", "--metric", "test/acc")
    assert {(r["dataset.train_size"], r["epochs"], r["runs"], r["test/acc_mean"]) for r in rows} == {
        (1000, 2, 2, 0.9), (5000, 2, 2, 0.95), (5000, 4, 2, 0.96)}
    assert err == ""  # different epochs are different workloads, not a budget mismatch within one


def test_stats_baseline_and_target_stay_within_a_workload(tmp_path, capsys):
    runs = workload_runs(tmp_path)
    rows, _ = compare_json(capsys, str(runs), "--group-by", "optimizer", "--stats", "--metric", "test/acc",
                           "--baseline", "adam", "--target", "val/acc=0.6", "--bootstrap", "1000")
    by = {(r["dataset"], r["optimizer"]): r for r in rows}
    for (ds, opt), r in by.items():
        values = [c[-1] for c in ACCS[(ds, opt)]]
        assert r["test/acc_iqm"] == pytest.approx(stats.iqm(values))
        assert (r["test/acc_iqm_lo"], r["test/acc_iqm_hi"]) == pytest.approx(stats.bootstrap_ci(values, "iqm", 1000, 0))
        assert r["verdict"] == "baseline" if opt == "adam" else r["verdict"] in ("better", "worse", "not resolved")
    for ds in ("mnist", "mnist1d"):
        sgd, adam = ([c[-1] for c in ACCS[(ds, o)]] for o in ("sgd", "adam"))
        assert by[(ds, "sgd")]["p_mw"] == pytest.approx(
            scipy.stats.mannwhitneyu(sgd, adam, alternative="two-sided").pvalue)
        assert by[(ds, "sgd")]["P(better)"] == pytest.approx(stats.prob_improvement(sgd, adam))
    # val/acc >= 0.6: every MNIST run at epoch 1; MNIST-1D adam at epochs 2, 2, 2 and sgd at 2, never, 3
    assert by[("mnist", "sgd")]["target_reached"] == "3/3" and by[("mnist", "sgd")]["target_steps"] == 100
    assert by[("mnist1d", "sgd")]["target_reached"] == "2/3" and by[("mnist1d", "sgd")]["target_steps"] == 300
    # a baseline that exists on one workload only: the other workload's rows say so
    rows, _ = compare_json(capsys, str(runs), "--group-by", "dataset,optimizer", "--baseline", "mnist,adam",
                           "--metric", "test/acc", "--bootstrap", "500")
    assert {(r["dataset"], r["optimizer"]): r["verdict"] for r in rows} == {
        ("mnist", "adam"): "baseline", ("mnist", "sgd"): "not resolved",
        ("mnist1d", "adam"): "other workload", ("mnist1d", "sgd"): "other workload"}


def test_profile_needs_two_workloads(tmp_path, capsys):
    runs = workload_runs(tmp_path)
    code, out, err = compare(capsys, str(runs), "--where", "dataset=mnist", "--group-by", "optimizer",
                             "--target", "val/acc=0.96", "--plot", str(tmp_path / "p.png"), "--plot-kind", "profile")
    assert code == 2 and out == "" and err.count("\n") == 1 and "needs runs on at least 2" in err
    code, _, err = compare(capsys, str(runs), "--group-by", "optimizer", "--target", "val/acc=0.96",
                           "--plot", str(tmp_path / "p.png"), "--plot-kind", "profile")
    # steps to 0.96: mnist adam median 200 (200, 100, 300), sgd 300 (300, 200, never);
    # mnist1d never for all: no best time there, every ratio inf. adam (4 - 1) / 2 / 3, sgd (4 - 1.5) / 2 / 3
    assert code == 0 and "2 workload(s), fewer than 3: its scores rank nothing (score: optimizer=adam 0.500, " \
                         "optimizer=sgd 0.417)" in err


def test_lr_lines_and_tradeoff_fronts_per_workload(tmp_path):
    runs = workload_runs(tmp_path / "runs")
    fig = decide_plots.lr(discover([runs]), [], "test/acc")
    lines = {li.get_label(): li.get_xydata().tolist() for li in fig.axes[0].lines if li.get_label()[0] != "_"}
    n = "(n=3 seeds per point)"
    assert lines == {f"dataset=mnist optimizer=adam {n}": [[0.001, pytest.approx(np.mean([0.98, 0.982, 0.971]))]],
                     f"dataset=mnist optimizer=sgd {n}": [[0.01, pytest.approx(np.mean([0.965, 0.972, 0.95]))]],
                     f"dataset=mnist1d optimizer=adam {n}": [[0.001, pytest.approx(np.mean([0.64, 0.62, 0.66]))]],
                     f"dataset=mnist1d optimizer=sgd {n}": [[0.01, pytest.approx(np.mean([0.61, 0.58, 0.63]))]]}

    stages = tmp_path / "stages"
    stage_run(stages / "a", 0, [("prune", 400_000, 0.96, 0.9)])
    stage_run(stages / "b", 0, [("prune", 300_000, 0.60, 0.9)])
    edit(stages / "b", ".hydra/config.yaml", lambda c: c.update(dataset="mnist1d"))
    edit(stages / "a", ".hydra/config.yaml", lambda c: c.update(dataset="mnist"))
    done = discover([stages])
    fronts = plots.tradeoff_fronts(done, "size", workloads=["dataset"])
    # one front across both would drop a's prune (b's is smaller) and keep a's trained model only
    assert {w: [p[2] for p in f] for w, f in fronts.items()} == {
        "dataset=mnist": ["a: prune", "a: trained"], "dataset=mnist1d": ["b: prune", "b: trained"]}
    fig = plots.tradeoff_figure(done, "size", workloads=["dataset"])
    assert sorted(li.get_label() for li in fig.axes[0].lines) == [
        "Pareto front dataset=mnist (2 points)", "Pareto front dataset=mnist1d (2 points)"]


# ---------------------------------------------------------------------------- seeds to resolve


def normal_quantiles(mean: float, m: int = 40) -> list[float]:
    """m values whose empirical distribution is N(mean, 1): its quantiles at (i + 1/2) / m."""
    return list(mean + scipy.stats.norm.ppf((np.arange(m) + 0.5) / m))


@pytest.mark.parametrize("effect", [1.2, 1.0])
def test_seeds_to_resolve_matches_the_power_of_the_true_distributions(effect):
    n, tried = stats.seeds_to_resolve(normal_quantiles(effect), normal_quantiles(0.0), reps=4000, seed=0)
    rng = np.random.default_rng(1)  # the same test on draws from the normal distributions themselves
    true = {k: float(np.mean(stats.mannwhitney_p_rows(rng.normal(effect, 1, (4000, k)),
                                                      rng.normal(0, 1, (4000, k))) < 0.05)) for k in tried}
    assert all(abs(tried[k] - true[k]) < 0.05 for k in tried), (tried, true)
    assert n == min(k for k in stats.SEED_COUNTS if true.get(k, 1.0) >= 0.8)
    # normal approximation for a t-test, over the Mann-Whitney test's efficiency 3 / pi: the first
    # seed count of the grid at or above it
    z = scipy.stats.norm.ppf(0.975) + scipy.stats.norm.ppf(0.8)
    approx = 2 * z**2 / effect**2 / (3 / np.pi)
    assert n == min(k for k in stats.SEED_COUNTS if k >= approx)


def test_seeds_to_resolve_small_or_no_difference():
    assert stats.seeds_to_resolve(normal_quantiles(0.3), normal_quantiles(0.0), reps=2000)[0] is None
    n, tried = stats.seeds_to_resolve(normal_quantiles(0.0), normal_quantiles(0.0), reps=2000)
    assert n is None and max(tried.values()) < 0.08  # rejects about alpha of the time
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 6)).round(1), rng.normal(size=(200, 5)).round(1)  # ties in many rows
    assert stats.mannwhitney_p_rows(a, b).tolist() == pytest.approx([stats.mannwhitney_p(x, y) for x, y in zip(a, b, strict=True)])


def test_not_resolved_baseline_prints_the_seeds_that_would_resolve_it(tmp_path, capsys):
    groups = {"adam": [0.970, 0.975, 0.972, 0.968, 0.974], "sgd": [0.968, 0.972, 0.966, 0.971, 0.965],
              "same": [0.970, 0.975, 0.972, 0.968, 0.974]}
    for opt, values in groups.items():
        for seed, acc in enumerate(values):
            write_run(tmp_path / f"{opt}{seed}", opt, seed, [acc], test_acc=acc, lr=0.01 if opt == "same" else 0.001)
    args = ["--group-by", "optimizer", "--baseline", "adam", "--metric", "test/acc", "--bootstrap", "2000"]
    rows, _ = compare_json(capsys, str(tmp_path), *args)
    by = {r["optimizer"]: r for r in rows}
    assert by["sgd"]["verdict"] == "not resolved"
    n, _ = stats.seeds_to_resolve(groups["sgd"], groups["adam"], 2000, 0)
    assert n is not None and by["sgd"]["seeds to resolve"] == str(n)
    assert by["same"]["seeds to resolve"] == "difference ~0: more seeds will not resolve it"
    assert by["adam"]["seeds to resolve"] is None
    assert compare_json(capsys, str(tmp_path), *args)[0] == rows  # seeded
    code, out, _ = compare(capsys, str(tmp_path), *args, "--format", "markdown")
    assert code == 0 and "seeds to resolve" in out and "rejects in >= 80%" in out


def test_a_model_setting_named_in_group_by_is_compared_not_a_workload(tmp_path, capsys):
    """--group-by model.dropout on one dataset: the two dropout rates are arms of one comparison
    (a verdict against the baseline), while a dataset named in --group-by stays a workload."""
    for dropout, accs in ((0.0, [0.50, 0.51, 0.52, 0.53, 0.54]), (0.5, [0.60, 0.61, 0.62, 0.63, 0.64])):
        for seed, acc in enumerate(accs):
            d = write_run(tmp_path / f"d{dropout}-{seed}", "adam", seed, [acc], test_acc=acc, dataset="mnist1d")
            edit(d, ".hydra/config.yaml", lambda c, p=dropout: c["model"].update(dropout=p))
    rows, _ = compare_json(capsys, str(tmp_path), "--group-by", "model.dropout", "--baseline", "0",
                           "--metric", "test/acc", "--bootstrap", "500")
    by = {r["model.dropout"]: r for r in rows}
    assert by[0.0]["verdict"] == "baseline" and by[0.5]["verdict"] == "better"
    assert by[0.5]["p_mw"] == pytest.approx(scipy.stats.mannwhitneyu(
        [0.60, 0.61, 0.62, 0.63, 0.64], [0.50, 0.51, 0.52, 0.53, 0.54], alternative="two-sided").pvalue)
    rows, _ = compare_json(capsys, str(workload_runs(tmp_path / "w")), "--group-by", "dataset,optimizer",
                           "--baseline", "mnist,sgd", "--metric", "test/acc", "--bootstrap", "500")
    assert {r["verdict"] for r in rows if r["dataset"] == "mnist1d"} == {"other workload"}
