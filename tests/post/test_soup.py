"""Model soups: uniform and greedy weight averages of runs fine-tuned from one parent, beside the
ensemble of the same runs and the best single run; incompatible runs refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from nnopt_cli import load_run
from nnopt_cli.data import load_splits
from nnopt_cli.post import soup as soups
from nnopt_cli.run.recipe import RunContext, train
from tests.conftest import compose_cfg

NOISY = "dataset.noise=1.0"  # a task that single runs do not all solve


def trained(path, *overrides):
    cfg = compose_cfg("epochs=1", NOISY, *overrides)
    train(cfg, RunContext(run_dir=path))
    (path / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), path / ".hydra" / "config.yaml")
    return path


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A parent run, three children fine-tuned from it, and one fine-tuned with a learning rate far too large."""
    root = tmp_path_factory.mktemp("soup")
    parent = trained(root / "parent", "epochs=2")
    kids = [trained(root / f"kid{i}", f"init_from={parent}", f"seed={i}", "optimizer.lr=0.05") for i in (1, 2, 3)]
    bad = trained(root / "huge_lr", f"init_from={parent}", "seed=9", "optimizer.lr=50")
    return {"root": root, "parent": parent, "kids": kids, "bad": bad, "data": load_splits(compose_cfg(NOISY)["dataset"])}


def weights(run):
    return torch.load(run / "model.pt", weights_only=True)


def cook(runs, method, data):
    members = soups.load_members(runs)
    return members, soups.make_soup(members, method, data, 512)


def test_a_soup_of_identical_runs_is_that_run(family, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(family["kids"][0], twin)
    members, soup = cook([family["kids"][0], twin], "uniform", family["data"])
    w = weights(family["kids"][0])
    assert soup.state.keys() == w.keys() and all(torch.equal(soup.state[k], w[k]) for k in w)
    summary = json.loads((family["kids"][0] / "summary.json").read_text())
    assert soup.scores["test/acc"] == summary["test/acc"]
    assert soup.scores["test/loss"] == pytest.approx(summary["test/loss"], rel=1e-6)


def test_the_uniform_soup_of_two_runs_is_the_mean_of_their_weights(family, tmp_path):
    a, b = family["kids"][:2]
    members, soup = cook([a, b], "uniform", family["data"])
    wa, wb = weights(a), weights(b)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # two different solutions
    for k in wa:
        assert torch.equal(soup.state[k], (wa[k] + wb[k]) / 2), k
    out = tmp_path / "soup"
    soups.write_folder(out, soup, soups.summary_of(soup, members, None))
    loaded = load_run(out)  # the soup's folder reads like a run's
    assert all(torch.equal(loaded.model.state_dict()[k], (wa[k] + wb[k]) / 2) for k in wa)
    assert loaded.summary["test/acc"] == soup.scores["test/acc"]
    assert loaded.summary["fuse"]["soup"] == [str(a), str(b)] and loaded.config["fuse"]["method"] == "uniform"
    # what the two runs share is the soup's; their seeds are not
    assert loaded.config["seed"] is None and loaded.config["optimizer"]["lr"] == 0.05
    assert loaded.config["init_from"] == str(family["parent"])


def test_greedy_soup_leaves_out_a_bad_member(family):
    runs = [*family["kids"], family["bad"]]
    members, greedy = cook(runs, "greedy", family["data"])
    assert str(family["bad"]) not in [str(m.run) for m in greedy.ingredients]
    assert len(greedy.ingredients) >= 1
    best = soups.best_single(members)
    assert greedy.ingredients[0] is best and greedy.scores["val/acc"] >= best.scores["val/acc"]
    tried = {t["run"]: t for t in greedy.tried}
    assert tried[str(family["bad"])]["added"] is False
    assert tried[str(family["bad"])]["soup_val/acc"] < greedy.scores["val/acc"]
    _, uniform = cook(runs, "uniform", family["data"])  # the bad weights drag the uniform soup down
    assert uniform.scores["val/acc"] < greedy.scores["val/acc"]
    summary = soups.summary_of(greedy, members, None)
    assert [m["in_soup"] for m in summary["fuse"]["members"]][-1] is False
    assert summary["best_single/val/acc"] == best.scores["val/acc"]


def test_ensemble_accuracy_is_the_accuracy_of_the_mean_softmax(family):
    members = soups.load_members(family["kids"])
    data = family["data"]
    scores = soups.ensemble_scores(members, data, 100)  # batches that split the test set unevenly
    with torch.no_grad():
        probs = sum(F.softmax(m.model(data.test_x), dim=1) for m in members) / len(members)
    assert scores["test/acc"] == pytest.approx((probs.argmax(1) == data.test_y).double().mean().item())
    assert scores["test/loss"] == pytest.approx(F.nll_loss(probs.log(), data.test_y).item(), rel=1e-5)


def test_runs_that_cannot_be_averaged_are_refused_in_one_line(family, tmp_path):
    kid = family["kids"][0]
    wide = trained(tmp_path / "wide", "model.hidden=[32]")
    scratch = trained(tmp_path / "scratch", "seed=5")
    other_data = trained(tmp_path / "other_data", f"init_from={family['parent']}", "dataset.noise=0.7")
    for other, says in ((wide, "model configs differ"), (scratch, "start from different weights"),
                        (other_data, "different data")):
        with pytest.raises(soups.FuseError) as err:
            soups.load_members([kid, other])
        assert says in str(err.value) and str(other) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(soups.FuseError, match="given twice"):
        soups.load_members([kid, kid])
    with pytest.raises(soups.FuseError, match="at least two runs"):
        soups.load_members([kid])
