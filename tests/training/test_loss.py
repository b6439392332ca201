"""The `loss` group: each loss against a hand computation, each trains, bad values are one line."""

from __future__ import annotations

import math

import pytest
import torch

from nnopt_cli.errors import ConfigError
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store.checkpoint import config_fingerprint
from nnopt_cli.store.folder import read_metrics
from nnopt_cli.training.loss import make_loss
from tests.conftest import compose_cfg

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
LABELS = torch.tensor([0, 2])


def softmax_rows():
    return [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in LOGITS.tolist()]


def test_mse_is_the_mean_squared_error_of_softmax_against_one_hot():
    p = softmax_rows()
    hand = sum((p[i][k] - (1.0 if k == LABELS[i] else 0.0)) ** 2 for i in range(2) for k in range(3)) / 6
    assert make_loss({"name": "mse"})(LOGITS, LABELS).item() == pytest.approx(hand, rel=1e-6)


def test_label_smoothing_and_cross_entropy_by_hand():
    p = softmax_rows()
    ce = -sum(math.log(p[i][LABELS[i]]) for i in range(2)) / 2
    assert make_loss({"name": "cross_entropy"})(LOGITS, LABELS).item() == pytest.approx(ce, rel=1e-6)
    eps = 0.2  # target: 1 - eps + eps/3 on the label, eps/3 elsewhere
    hand = -sum(((1 - eps + eps / 3) if k == LABELS[i] else eps / 3) * math.log(p[i][k])
                for i in range(2) for k in range(3)) / 2
    assert make_loss({"name": "label_smoothing", "smoothing": eps})(LOGITS, LABELS).item() == pytest.approx(hand, rel=1e-6)
    assert make_loss(None)(LOGITS, LABELS).item() == pytest.approx(ce, rel=1e-6)  # old run folders


@pytest.mark.parametrize("loss", ["cross_entropy", "label_smoothing", "mse"])
def test_every_loss_trains_and_val_loss_stays_cross_entropy(loss, tmp_path):
    lr = ["optimizer.lr=0.01"] if loss == "mse" else []
    summary = train(compose_cfg(f"loss={loss}", "epochs=3", *lr), RunContext(tmp_path))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert summary["status"] == "completed" and rows[-1]["train/loss"] < rows[0]["train/loss"]
    assert rows[-1]["val/acc"] > 0.5  # synthetic prototypes are easy: every loss learns them


def test_default_loss_keeps_old_fingerprints():
    cfg = compose_cfg()
    old = {k: v for k, v in cfg.items() if k != "loss"}  # a run folder from before the loss group
    assert config_fingerprint(cfg) == config_fingerprint(old)
    assert config_fingerprint(compose_cfg("loss=mse")) != config_fingerprint(old)


@pytest.mark.parametrize(("override", "key"), [("loss.smoothing=1.0", "loss.smoothing"),
                                              ("loss.smoothing=-0.1", "loss.smoothing")])
def test_bad_loss_settings_are_one_line(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg("loss=label_smoothing", override))
    assert e.value.key == key and "\n" not in str(e.value)


def test_the_torch_free_check_knows_every_loss_the_module_builds():
    """training/checks.py names the losses without importing torch; loss.py builds them."""
    from nnopt_cli.training import checks, loss

    assert checks.CLASSIFICATION_LOSSES == tuple(loss.LOSSES)
    assert checks.REGRESSION_LOSSES == tuple(loss.REGRESSION_LOSSES)
    for names, task in ((checks.CLASSIFICATION_LOSSES, "classification"), (checks.REGRESSION_LOSSES, "regression")):
        for name in names:
            checks.check_loss({"name": name, "delta": 1.0, "smoothing": 0.1}, 3, task)
