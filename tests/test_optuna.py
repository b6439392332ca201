"""HPO with Hydra's Optuna sweeper: the search preset composes against nnopt's own config groups,
and a small study survives failed and diverged trials and leaves files `nnopt compare` reads."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from hydra import compose, initialize_config_dir

from nnopt_cli.config import conf_dir
from tests.conftest import TINY


def test_search_preset_maximizes_val_acc_over_real_options():
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="train", overrides=["hparams_search=mnist_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    for group in ("optimizer", "scheduler"):  # every choice is an option of that config group
        choices = re.fullmatch(r"choice\((.*)\)", sweeper.params[group]).group(1).split(",")
        for name in choices:
            assert (conf_dir() / group / f"{name.strip()}.yaml").exists(), (group, name)
    assert sweeper.params["optimizer.lr"].startswith("tag(log, interval(")


@pytest.mark.slow
def test_study_scores_failed_and_diverged_trials_low_and_goes_on(cli, tmp_path):
    # seed 2 draws lr 1e12 (diverges), 0.05 (trains), 1e12, -1.0 (refused by validation)
    out = cli("train", "-m", "hparams_search=mnist_optuna", *TINY, "dataset.noise=2.0",
              "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=2", "optimizer=sgd", "scheduler=none",
              "optimizer.lr=choice(0.05,-1.0,1e12)")
    assert "Best value" in out.stdout + out.stderr, out.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(4)]
    assert [s["status"] for s in summaries] == ["diverged", "completed", "diverged", "failed"]

    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == summaries[1]["best/val/acc"] > 0
    trained = yaml.safe_load((sweep / "1" / ".hydra" / "config.yaml").read_text())["optimizer"]
    assert best["best_params"] == {"optimizer.lr": 0.05, "optimizer.weight_decay": trained["weight_decay"]}

    # every trial is a run folder that `nnopt compare` reads, with its status
    table = cli("compare", str(sweep), "--format", "json")
    assert table.returncode == 0, table.stderr
    rows = {r["run"].rsplit("/", 1)[-1]: r for r in json.loads(table.stdout)}
    assert [rows[str(i)]["status"] for i in range(4)] == ["diverged", "completed", "diverged", "failed"]
    assert rows["1"]["best/val/acc"] == best["best_value"] and rows["3"]["optimizer.lr"] == -1
