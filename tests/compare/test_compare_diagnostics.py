"""nnopt compare over diagnostics: per-layer plots and the end-of-run diag/* columns."""

from __future__ import annotations

import json

import pytest

from nnopt_cli.cli.compare import run as compare_main
from nnopt_cli.compare import diag_plots, plots
from nnopt_cli.compare.discover import discover
from tests.compare.test_compare import write_run


def diag_run(d, optimizer, seed, grad_norms, sharpness):
    """A run folder with hand-written diagnostics: layer 'a' has grad_norms[i] at step 1 + 10 i."""
    write_run(d, {"optimizer": {"name": optimizer}, "seed": seed},
              {"status": "completed", "test/acc": 0.9, "diag/sharpness": sharpness, "diag/dead_share": 0.25},
              [{"epoch": 1, "val/acc": 0.9}])
    rows = [{"kind": "step", "epoch": 1, "step": 1 + 10 * i,
             "layers": {"a": {"grad_norm": g, "dead": 0.5}, "b": {"grad_norm": 2 * g}}}
            for i, g in enumerate(grad_norms)]
    rows.append({"kind": "epoch", "epoch": 1, "step": 30, "layers": {"a": {"weight_norm": 1.0}}})
    (d / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def runs(tmp_path):
    diag_run(tmp_path / "r0", "sgd", 0, [1.0, 2.0, 3.0], 10.0)
    diag_run(tmp_path / "r1", "sgd", 1, [3.0, 4.0, 5.0], 20.0)
    diag_run(tmp_path / "r2", "adam", 0, [0.1, 0.2, 0.3], 5.0)
    return tmp_path


def test_group_mean_and_band_per_layer_match_a_hand_computation(runs):
    found = {r.label: r for r in discover([runs])}
    sgd = plots.Series("sgd", [found["r0"], found["r1"]])
    adam = plots.Series("adam", [found["r2"]])
    fig = diag_plots.lines_figure([sgd, adam], "grad_norm")
    ax_a, ax_b = [ax for ax in fig.axes if ax.get_visible()][:2]
    assert ax_a.get_title() == "a" and ax_b.get_title() == "b"  # no type or shape recorded: the name alone
    mean = ax_a.lines[0]
    assert list(mean.get_xdata()) == [1, 11, 21] and list(mean.get_ydata()) == [2.0, 3.0, 4.0]
    band = ax_a.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx(4.0 + 2 ** 0.5)  # sample std of (3, 5) is sqrt(2)
    assert list(ax_b.lines[1].get_ydata()) == [0.2, 0.4, 0.6]


def test_compare_draws_diag_plots_and_shows_diag_columns(runs, tmp_path, capsys):
    for kind in ("diag", "diag-heatmap"):
        out = tmp_path / f"{kind}.png"
        compare_main([str(runs), "--group-by", "optimizer", "--plot", str(out), "--plot-kind", kind])
        assert out.stat().st_size > 0
    capsys.readouterr()
    compare_main([str(runs), "--metric", "diag/sharpness,diag/dead_share", "--format", "json"])
    rows = {r["run"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["r1"]["diag/sharpness"] == 20.0 and rows["r2"]["diag/dead_share"] == 0.25


def test_diag_plot_refuses_runs_without_diagnostics_and_unknown_quantities(runs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_main([str(runs), "--plot", str(tmp_path / "x.png"), "--plot-kind", "diag", "--plot-metric", "loss"])
    assert "grad_norm" in capsys.readouterr().err
    for r in ("r0", "r1", "r2"):
        (runs / r / "diagnostics.jsonl").unlink()
    with pytest.raises(SystemExit):
        compare_main([str(runs), "--plot", str(tmp_path / "x.png"), "--plot-kind", "diag"])
    assert "diagnostics=basic" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_heatmap_cells_are_log10_of_the_group_means_on_one_colour_scale(runs):
    import numpy as np

    found = {r.label: r for r in discover([runs])}
    fig = diag_plots.heatmap_figure([plots.Series("sgd", [found["r0"], found["r1"]]),
                                     plots.Series("adam", [found["r2"]])], "grad_norm")
    sgd, adam = [ax.images[0] for ax in fig.axes if ax.images]
    assert np.allclose(sgd.get_array(), np.log10([[2.0, 3.0, 4.0], [4.0, 6.0, 8.0]]))
    assert sgd.get_clim() == adam.get_clim() == pytest.approx((np.log10(0.1), np.log10(8.0)))
