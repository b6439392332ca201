"""nnopt lr-find and nnopt landscape: on problems whose answer is known."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from nnopt_cli.cli import lr_find
from nnopt_cli.errors import NnoptError
from tests.conftest import TINY, compose_cfg

# softmax regression on overlapping classes (n >> d, so not separable: a too large LR blows the loss up)
LOGISTIC = [*TINY, "model.hidden=[]", "optimizer=sgd", "batch_size.size=64", "dataset.n_train=4096",
            "dataset.noise=2.0"]


def smoothness_bound(overrides) -> float:
    """4 / lambda_max(X~'X~ / n): softmax regression's cross-entropy has Hessian <= lambda/2 (Boehning's
    bound on diag(p) - pp'), so gradient descent converges for every LR below this."""
    from nnopt_cli.run.tools import load_data

    data = load_data(compose_cfg(*overrides, tiny=False)["dataset"])
    x = data.train_x.reshape(len(data.train_x), -1).double().numpy()
    x = np.hstack([x, np.ones((len(x), 1))])
    return 4 / np.linalg.eigvalsh(x.T @ x / len(x))[-1]


def test_lr_find_suggests_an_lr_below_divergence_and_above_a_tiny_one(tmp_path, capsys):
    args = argparse.Namespace(overrides=LOGISTIC, start_lr=1e-6, end_lr=100.0, steps=100, stop_factor=4.0,
                              out=tmp_path / "lrf")
    result = lr_find.lr_find(args)
    test, sugg = result["test"], result["suggestions"]
    safe = smoothness_bound(LOGISTIC)
    assert test.stopped != "end of the ramp"  # it found the blow-up
    assert 1e-4 < sugg["min/10"] < safe < test.lrs[-1]
    assert 1e-4 < sugg["steepest"] < test.lrs[-1]
    out = capsys.readouterr().out
    assert f"optimizer.lr={sugg['min/10']:.3g}" in out and "min/10" in out and "steepest" in out
    doc = json.loads((tmp_path / "lrf" / "lr_find.json").read_text())
    assert doc["suggestion"] == {"rule": "min/10", "optimizer.lr": sugg["min/10"]}
    assert doc["names"] == {"optimizer": "sgd", "model": "mlp", "dataset": "synthetic"}  # the figure's title
    assert (tmp_path / "lrf" / "lr_find.png").stat().st_size > 0
    assert len((tmp_path / "lrf" / "lr_find.csv").read_text().splitlines()) == len(test.lrs) + 1


def test_smoothing_is_fastais_debiased_average_and_the_rules_pick_by_hand():
    t = lr_find.RangeTest(lrs=[10.0 ** (i / 10 - 3) for i in range(30)])
    # a curve falling fastest at index 12 (0.016) with its minimum at index 20 (0.1)
    t.smoothed = [3.0 - 0.01 * i for i in range(10)] + [2.9, 2.5, 1.5, 1.2, 1.1, 1.05, 1.0, 0.99, 0.98,
                                                        0.97, 0.9, 1.0, 1.5, 2.0, 3.0, 4.0, 5, 6, 7, 8]
    sugg = t.suggestions()
    assert sugg["min/10"] == pytest.approx(10 ** (20 / 10 - 3) / 10)
    assert sugg["steepest"] == pytest.approx(10 ** (11 / 10 - 3))  # the slope from 11 to 12 is the steepest


def test_lr_find_figure_names_optimizer_model_and_dataset_and_renders_cleanly():
    from tests.compare.test_plot_labels import render_strictly, texts

    t = lr_find.RangeTest(lrs=[10.0 ** (i / 10 - 3) for i in range(30)], losses=[2.0 - 0.03 * i for i in range(30)])
    t.smoothed = list(t.losses)
    meta = {"batch_size": 64, "names": {"optimizer": "adam", "model": "cnn", "dataset": "mnist1d"}}
    fig = lr_find.figure(t, {"min/10": 0.01, "steepest": 0.02}, meta)
    render_strictly(fig)
    assert "optimizer=adam model=cnn dataset=mnist1d" in texts(fig) and "30 steps" in texts(fig)


def test_the_option_an_override_picked_names_the_group():
    assert lr_find.choice(["model=cnn", "optimizer=sgd", "optimizer.lr=0.1", "+optimizer=adam"], "optimizer",
                          "SGD") == "adam"
    assert lr_find.choice(["optimizer.lr=0.1"], "optimizer", "SGD") == "SGD"


def test_landscape_figure_names_which_run_is_alpha_0_and_which_alpha_1():
    from nnopt_cli.cli import landscape
    from tests.compare.test_plot_labels import render_strictly, texts

    rows = [{"alpha": a / 4, "loss": 1.0 + (a / 4 - 0.5) ** 2, "acc": 0.5} for a in range(-2, 7)]
    doc = {"run": "outputs/a", "line": {"from": "outputs/a/model.pt", "to": "outputs/b/model.pt", "rows": rows},
           "workload": {"dataset": "mnist1d", "model": "mlp"}, "samples": 100,
           "surface": {"center": "outputs/a/model.pt", "coords": [-1.0, 0.0, 1.0],
                       "loss": [[2.0, 1.5, 2.0], [1.5, 1.0, 1.5], [2.0, 1.5, 2.0]]}}
    fig = landscape.figure(doc)
    render_strictly(fig)
    text = texts(fig)
    assert "alpha=0: outputs/a final weights (model.pt)" in text
    assert "alpha=1: outputs/b final weights (model.pt)" in text
    assert "dataset=mnist1d model=mlp" in text and "model.pt -> model.pt" not in text
    doc["line"].update({"from": "outputs/a/model.init.pt", "to": "outputs/a/model.pt"})
    assert "alpha=0: outputs/a initial weights (model.init.pt)" in texts(landscape.figure(doc))


def test_lr_find_never_writes_into_a_run_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    args = argparse.Namespace(overrides=LOGISTIC, start_lr=1e-6, end_lr=1.0, steps=20, stop_factor=4.0,
                              out=tmp_path / "run" / "lrf")
    with pytest.raises(NnoptError, match="inside run folder"):
        lr_find.lr_find(args)
    assert not (tmp_path / "run" / "lrf").exists()


def test_lr_find_leaves_no_trace_in_the_global_state_it_was_given():
    from nnopt_cli.run.tools import load_data, make_model

    cfg = compose_cfg(*LOGISTIC)
    data = load_data(cfg["dataset"])
    model = make_model(cfg, data.input_shape, data.num_classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = lr_find.ramp_trainer(cfg, model, len(data.train_x), torch.device("cpu"), 64, 20)
    rng = torch.get_rng_state()
    test = lr_find.range_test(trainer, data, 1e-5, 1.0, 20)
    assert torch.equal(rng, torch.get_rng_state())  # the batches come from its own generator
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it did train
    assert len(test.lrs) == 20 and test.stopped == "end of the ramp"
    assert test.lrs[0] == 1e-5 and test.lrs[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("loss", ["mse", "label_smoothing"])
def test_lr_find_trains_on_the_configured_loss(tmp_path, loss):
    """Its first loss is the configured loss of the initial model on the first batch, computed here by hand."""
    import torch.nn.functional as F

    from nnopt_cli.run.tools import load_data, make_model

    overrides = [*LOGISTIC, f"loss={loss}"]
    args = argparse.Namespace(overrides=overrides, start_lr=1e-6, end_lr=1.0, steps=10, stop_factor=4.0,
                              out=tmp_path / "lrf")
    first = lr_find.lr_find(args)["test"].losses[0]
    cfg = compose_cfg(*overrides)
    torch.manual_seed(cfg["seed"])  # as lr-find: seed, load the data, build the model
    data = load_data(cfg["dataset"])
    model = make_model(cfg, data.input_shape, data.num_classes)
    idx = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(cfg["seed"]))[:64]
    with torch.no_grad():
        out, y = model(data.train_x[idx]), data.train_y[idx]
    k = out.shape[1]
    if loss == "mse":  # softmax against the one-hot target, mean over the batch and the classes
        expected = ((out.softmax(1) - torch.eye(k)[y]) ** 2).mean().item()
    else:  # smoothing 0.1: the target puts 0.9 + 0.1/k on the label and 0.1/k elsewhere
        target = torch.full_like(out, cfg["loss"]["smoothing"] / k)
        target[torch.arange(len(y)), y] += 1 - cfg["loss"]["smoothing"]
        expected = -(target * out.log_softmax(1)).sum(1).mean().item()
    assert first == pytest.approx(expected, rel=1e-5)
    assert abs(first - F.cross_entropy(out, y).item()) > 1e-3  # not the cross-entropy it used to take


# ---------------------------------------------------------------------------- nnopt landscape


def make_run(path, *overrides, init=True):
    """A run folder as nnopt train leaves it: .hydra/config.yaml, model.pt and model.init.pt."""
    import yaml

    from nnopt_cli.run.recipe import RunContext, train
    from nnopt_cli.run.tools import load_data, make_model

    cfg = compose_cfg("epochs=1", *overrides)
    train(cfg, RunContext(path))
    (path / ".hydra").mkdir(exist_ok=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if init and not (path / "model.init.pt").exists():
        torch.manual_seed(cfg["seed"])
        data = load_data(cfg["dataset"])
        torch.save(make_model(cfg, data.input_shape, data.num_classes).state_dict(), path / "model.init.pt")
    return cfg


def direct_loss(cfg, weights, samples, seed) -> float:
    """The loss of a weight file on the subset, computed without landscape.py."""
    from nnopt_cli.run.tools import load_data, make_model

    data = load_data(cfg["dataset"])
    model = make_model(cfg, data.input_shape, data.num_classes)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    idx = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed))[:samples]
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).item()


def landscape_args(run, tmp_path, **kw):
    base = dict(run=run, to=None, range=(-0.5, 1.5), points=5, grid=3, span=1.0, samples=100, seed=0,
                out=tmp_path / "land")
    return argparse.Namespace(**{**base, **kw})


def test_landscape_line_endpoints_are_the_losses_of_the_two_weight_sets(tmp_path):
    from nnopt_cli.cli import landscape

    cfg = make_run(tmp_path / "a", "model.batch_norm=true")
    doc = landscape.landscape(landscape_args(tmp_path / "a", tmp_path))
    rows = {r["alpha"]: r["loss"] for r in doc["line"]["rows"]}
    assert doc["workload"] == {"dataset": "synthetic", "model": "mlp"}
    assert rows[0.0] == pytest.approx(direct_loss(cfg, tmp_path / "a" / "model.init.pt", 100, 0), rel=1e-6)
    assert rows[1.0] == pytest.approx(direct_loss(cfg, tmp_path / "a" / "model.pt", 100, 0), rel=1e-6)
    assert len(doc["surface"]["loss"]) == 3 and doc["surface"]["loss"][1][1] == pytest.approx(rows[1.0], rel=1e-6)
    for name in ("landscape.json", "line.csv", "surface.csv", "landscape.png"):
        assert (tmp_path / "land" / name).stat().st_size > 0

    make_run(tmp_path / "b", "model.batch_norm=true", "seed=1", init=False)
    doc = landscape.landscape(landscape_args(tmp_path / "a", tmp_path, to=tmp_path / "b", grid=0,
                                             out=tmp_path / "land2"))
    rows = {r["alpha"]: r["loss"] for r in doc["line"]["rows"]}
    assert rows[0.0] == pytest.approx(direct_loss(cfg, tmp_path / "a" / "model.pt", 100, 0), rel=1e-6)
    assert rows[1.0] == pytest.approx(direct_loss(cfg, tmp_path / "b" / "model.pt", 100, 0), rel=1e-6)


def test_filter_normalized_directions_match_each_filters_norm():
    from nnopt_cli.cli.landscape import direction

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(12, 4))
    center = {k: v.detach().clone() for k, v in model.state_dict().items()}
    d = direction(model, center, torch.Generator().manual_seed(0))
    for k in ("0.weight", "2.weight"):
        assert torch.allclose(d[k].flatten(1).norm(dim=1), center[k].flatten(1).norm(dim=1), rtol=1e-5)
        assert not torch.allclose(d[k], center[k])
    assert not d["0.bias"].any() and not d["2.bias"].any()


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"].update(_target_="os.system"), "model._target_"),
    (lambda c: c["activation"].update(name="${oc.env:HOME}"), "activation.name"),
    (lambda c: c["model"].update(hidden=["${oc.env:HOME}"]), "model.hidden"),
])
def test_landscape_reads_a_run_folders_config_as_untrusted(tmp_path, edit, message):
    import yaml

    from nnopt_cli.run.tools import run_config

    cfg = compose_cfg()
    edit(cfg)
    cfg["dataset"]["root"] = "/etc"
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(NnoptError, match=message.replace(".", r"\.")):
        run_config(tmp_path)


def test_run_config_drops_dataset_paths(tmp_path):
    import yaml

    from nnopt_cli.run.tools import run_config

    cfg = compose_cfg()
    cfg["dataset"]["root"] = "/etc"
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "root" not in run_config(tmp_path)["dataset"]


@pytest.mark.slow
def test_cli_train_with_diagnostics_then_landscape_and_lr_find(tmp_path):
    from tests.conftest import run_cli

    done = run_cli("train", *TINY, "epochs=1", "diagnostics=basic", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "diagnostics.jsonl").stat().st_size > 0
    land = run_cli("landscape", "run", "--grid", "3", "--points", "3", "--samples", "64", "--out", "land",
                   cwd=tmp_path)
    assert land.returncode == 0, land.stderr
    assert (tmp_path / "land" / "landscape.png").exists() and "wrote land/landscape.png" in land.stdout
    bad = run_cli("lr-find", *TINY, "optimizer=nope", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "optimizer" in bad.stderr
    inside = run_cli("lr-find", *TINY, "--steps", "20", "--out", "run/lrf", cwd=tmp_path)
    assert inside.returncode == 2 and "inside run folder" in inside.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["land", "run"]  # nothing else written
