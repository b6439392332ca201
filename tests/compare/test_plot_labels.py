"""Every figure names what it shows, keeps its legend inside the saved image, draws without a
matplotlib warning, and keeps its lines apart: each `--plot-kind` of compare on hand-made runs whose
workloads, optimizers and seeds are known, and the figures of lr-find and landscape."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnopt_cli.cli.compare import run as compare_main
from nnopt_cli.compare import decide_plots, diag_plots, figures, plots
from nnopt_cli.compare.discover import discover
from nnopt_cli.compare.pipeline import PLOT_KINDS
from nnopt_cli.config import conf_dir
from tests.compare.test_compare import write_run

OPTIMIZERS = {"sgd": (0.01, 0.1), "adam": (0.001, 0.01)}
DATASETS = ("mnist1d", "synthetic")
SEEDS = (0, 1)


def make_run(d: Path, dataset: str, opt: str, lr: float, seed: int) -> None:
    """Three epochs whose accuracy depends on the optimizer, LR and seed; two post-training stages
    (sizes 400 kB .. 3.2 MB); diagnostics of a two-layer MLP."""
    good = {("sgd", 0.1): 0.9, ("sgd", 0.01): 0.7, ("adam", 0.001): 0.85, ("adam", 0.01): 0.6}[(opt, lr)]
    if dataset == "synthetic":
        good -= 0.1
    acc = [good * f + 0.01 * seed for f in (0.6, 0.9, 1.0)]
    epochs = [{"epoch": e + 1, "val/acc": a, "val/loss": 1 - a, "lr": lr * 0.5 ** e, "batch_size": 64,
               "steps": 10, "total_steps": 10 * (e + 1)} for e, a in enumerate(acc)]
    base = {"test/acc": acc[-1], "size_bytes": 3_200_000}
    stages = [{"name": "prune", "settings": {}, "before": base,
               "after": {"test/acc": acc[-1] - 0.01, "size_bytes": 1_600_000}},
              {"name": "quantize", "settings": {}, "before": {},
               "after": {"test/acc": acc[-1] - 0.03, "size_bytes": 400_000 + 1000 * seed}}]
    write_run(d, {"optimizer": {"lr": lr}, "dataset": {"name": dataset}, "model": {"name": "mlp"}, "seed": seed,
                  "epochs": 3},
              {"status": "completed", "test/acc": acc[-1], "test/loss": 1 - acc[-1], "epochs": 3, "stages": stages},
              epochs, choices={"optimizer": opt, "dataset": dataset, "model": "mlp"})
    layers = {"net.0": {"type": "Linear", "shape": "784x256"}, "net.2": {"type": "Linear", "shape": "256x10"}}
    rows = [{"kind": "step", "epoch": 1, "step": 1 + 10 * i,
             "layers": {k: {**v, "grad_norm": (1 + i) * good, "dead": 0.1} for k, v in layers.items()}}
            for i in range(3)]
    (d / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labels") / "runs"
    i = 0
    for dataset in DATASETS:
        for opt, lrs in OPTIMIZERS.items():
            for lr in lrs:
                for seed in SEEDS:
                    make_run(root / f"r{i:02d}", dataset, opt, lr, seed)
                    i += 1
    return root


def texts(fig: Figure) -> str:
    """Every title of the figure: its suptitle, each panel's title, and any text in the axes (wrapped
    lines joined again)."""
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), *(t.get_text() for t in ax.texts)]
    return " ".join(" ".join(parts).split())


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for lg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if lg for t in lg.get_texts()]


def render_strictly(fig: Figure) -> bytes:
    """The PNG, with every warning an error; each legend must lie inside the figure."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig.savefig(buf, format="png", dpi=100)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        for lg in legends:
            box, outer = lg.get_window_extent(renderer), fig.bbox
            assert (box.x0 >= outer.x0 - 1 and box.y0 >= outer.y0 - 1 and box.x1 <= outer.x1 + 1
                    and box.y1 <= outer.y1 + 1), f"legend {box} spills out of the figure {outer}"
    return buf.getvalue()


KIND_ARGS = {
    "curves": ["--group-by", "optimizer"],
    "schedule": ["--group-by", "optimizer"],
    "tradeoff": [],
    "lr": ["--group-by", "optimizer,optimizer.lr"],
    "target": ["--group-by", "optimizer", "--target", "val/acc=0.5"],
    "profile": ["--group-by", "optimizer", "--target", "val/acc=0.5"],
    "diag": ["--group-by", "optimizer"],
    "diag-heatmap": ["--group-by", "optimizer"],
}


@pytest.mark.parametrize("kind", PLOT_KINDS)
def test_every_plot_kind_names_its_workload_and_optimizers_and_renders_cleanly(kind, study, tmp_path, capsys,
                                                                               monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            compare_main([str(study), "--plot", str(tmp_path / "p.png"), "--plot-kind", kind, *KIND_ARGS[kind]])
        except SystemExit as e:
            pytest.fail(f"exit {e.code}: {capsys.readouterr().err}")
    (fig,) = drawn
    assert render_strictly(fig)[:4] == b"\x89PNG"
    text = texts(fig)
    assert "model=mlp" in text and "datasets: mnist1d, synthetic" in text, text
    assert "optimizers: sgd, adam" in text, text
    if kind in ("curves", "schedule", "diag", "diag-heatmap"):
        assert "mean of n=4 seeds per point" in text  # 2 seeds x 2 LRs per optimizer and dataset
    if kind == "lr":
        assert "mean of n=2 seeds per point" in text
    if kind == "target":
        assert "median of n=4 seeds per bar" in text
    if kind == "tradeoff":
        assert "one point per run and stage" in text


def test_lr_sensitivity_says_seeds_per_point_and_marks_the_default_and_tuned_lr(study):
    runs = [r for r in discover([study]) if r.config["dataset"] == "mnist1d"]
    fig = decide_plots.lr(runs, ["optimizer", "optimizer.lr"], "test/acc")
    render_strictly(fig)
    labels = legend_texts(fig)
    assert "optimizer=adam (n=2 seeds per point)" in labels and "optimizer=sgd (n=2 seeds per point)" in labels
    assert "tuned LR (highest mean)" in labels and "default LR (its optimizer config)" in labels
    ax = fig.axes[0]
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    # the best mean of each optimizer: sgd at 0.1, adam at 0.001
    assert sorted(float(s.get_xdata()[0]) for s in stars) == [0.001, 0.1]
    defaults = sorted(float(ln.get_xdata()[0]) for ln in ax.lines if ln.get_linestyle() == ":")
    conf = {o: yaml.safe_load((conf_dir() / "optimizer" / f"{o}.yaml").read_text())["lr"] for o in OPTIMIZERS}
    assert defaults == sorted(conf.values())


def test_runs_at_one_lr_that_differ_in_more_than_the_seed_are_not_called_seeds(tmp_path, capsys):
    for i, wd in enumerate((0.0, 0.1)):
        make_run(tmp_path / f"r{i}", "mnist1d", "sgd", 0.1, 0)
        cfg = tmp_path / f"r{i}" / ".hydra" / "config.yaml"
        doc = yaml.safe_load(cfg.read_text())
        doc["optimizer"]["weight_decay"] = wd
        cfg.write_text(yaml.safe_dump(doc))
    make_run(tmp_path / "r2", "mnist1d", "sgd", 0.01, 0)
    fig = decide_plots.lr(discover([tmp_path]), [], "test/acc")
    render_strictly(fig)
    assert "optimizer=sgd (n=1-2 runs per point, also differing in optimizer.weight_decay)" in legend_texts(fig)
    assert "mean of n=1-2 runs per point" in texts(fig)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differ in optimizer.weight_decay, not only in seed" in err


def test_a_loss_is_tuned_to_its_lowest_mean(study):
    runs = [r for r in discover([study]) if r.config["dataset"] == "mnist1d"]
    fig = decide_plots.lr(runs, ["optimizer", "optimizer.lr"], "test/loss")
    stars = [ln for ln in fig.axes[0].lines if ln.get_marker() == "*"]
    assert sorted(float(s.get_xdata()[0]) for s in stars) == [0.001, 0.1]  # lowest loss = highest accuracy
    assert "tuned LR (lowest mean)" in legend_texts(fig)


def test_twenty_lines_have_distinct_colour_and_dash_and_more_ask_to_group(study, capsys):
    runs = discover([study])[:1]
    series = [plots.Series(f"line {i}", runs) for i in range(20)]
    fig = plots.curves_figure(series, "val/acc")
    looks = {(ln.get_color(), ln.get_linestyle()) for ln in fig.axes[0].lines}
    assert len(looks) == 20
    render_strictly(fig)
    assert capsys.readouterr().err == ""
    fig = plots.curves_figure([*series, plots.Series("line 20", runs)], "val/acc")
    render_strictly(fig)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "21 lines" in err[0] and "--group-by" in err[0]


def test_long_labels_widen_the_figure_instead_of_spilling(study):
    runs = discover([study])[:1]
    series = [plots.Series(f"optimizer=adam lr={i} a_rather_long_config_key=some_long_value_{i}", runs)
              for i in range(20)]
    render_strictly(plots.curves_figure(series, "val/acc"))


def test_a_crowded_legend_takes_columns_and_stays_inside(study, capsys):
    runs = discover([study])[:1]
    fig = plots.curves_figure([plots.Series(f"run {i:02d} seed={i}", runs) for i in range(45)], "val/acc")
    render_strictly(fig)
    assert fig.axes[0].get_legend()._ncols >= 2
    assert "45 lines" in capsys.readouterr().err


def test_diagnostics_panels_name_layers_by_module_type_and_shape(study):
    runs = discover([study])
    fig = diag_plots.lines_figure([plots.Series("all", runs)], "grad_norm")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["net.0 Linear 784x256", "net.2 Linear 256x10"]
    fig = diag_plots.heatmap_figure([plots.Series("all", runs)], "grad_norm")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["net.0 Linear 784x256", "net.2 Linear 256x10"]
    render_strictly(fig)


def test_diagnostics_rows_record_each_layers_type_and_shape():
    from torch import nn

    from nnopt_cli.diagnostics.stats import find_layers

    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(784, 256))
    assert [(layer.name, layer.kind, layer.shape) for layer in find_layers(model)] == [
        ("0", "Conv2d", "1x8 k3x3"), ("3", "Linear", "784x256")]


def test_tradeoff_bytes_on_a_log_axis_in_kb_and_mb(study):
    runs = [r for r in discover([study]) if r.config["dataset"] == "mnist1d"]
    fig = plots.tradeoff_figure(runs, "size")
    render_strictly(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis.get_offset_text().get_text() == ""
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "500 kB" in ticks and "1 MB" in ticks and "2 MB" in ticks, ticks
    assert all(t.endswith(("kB", "MB")) for t in ticks)


def test_bytes_format_with_decimal_units():
    assert [figures._bytes(v) for v in (512, 2_000, 1_500_000, 3e9)] == ["512 B", "2 kB", "1.5 MB", "3 GB"]


def test_a_profile_over_fewer_than_three_workloads_says_it_ranks_nothing(study, tmp_path, capsys, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig))
    compare_main([str(study), "--plot", str(tmp_path / "p.png"), "--plot-kind", "profile", *KIND_ARGS["profile"]])
    err = [line for line in capsys.readouterr().err.splitlines() if "performance profile" in line]
    assert len(err) == 1 and "2 workload(s), fewer than 3: its scores rank nothing" in err[0]
    (fig,) = drawn
    assert "only 2 workload(s)" in texts(fig)
    assert not any("score" in t for t in legend_texts(fig))


def test_a_profile_over_three_workloads_ranks_with_scores(capsys):
    import numpy as np

    taus = np.linspace(1, 4, 50)
    rho = np.array([np.ones(50), np.linspace(0, 1, 50)])
    fig = plots.profile_figure(["a", "b"], rho, taus, [1.0, 0.5], "steps", ["w1", "w2", "w3"])
    render_strictly(fig)
    assert legend_texts(fig) == ["a (score 1.000)", "b (score 0.500)"]
    assert "only" not in texts(fig)


def test_a_dollar_in_a_label_is_text_not_mathtext(study):
    runs = discover([study])[:1]
    render_strictly(plots.curves_figure([plots.Series("cost=$5 and $x^2", runs)], "val/acc"))
