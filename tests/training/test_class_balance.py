"""loss.class_weights (sklearn's 'balanced' formula, or a list) and batch_size.sampler=balanced
(class-balanced draws with replacement, the epoch's length unchanged); bad values are one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnopt_cli.data import load_splits
from nnopt_cli.errors import ConfigError
from nnopt_cli.models import make_model
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.training.loss import class_weights, make_loss
from nnopt_cli.training.sampler import BalancedSampler
from nnopt_cli.training.trainer import Trainer
from tests.conftest import compose_cfg

COUNTS = torch.tensor([50, 20, 5, 25])


def test_balanced_weights_are_sklearns_formula():
    n, classes = 100, 4  # compute_class_weight("balanced"): n_samples / (n_classes * bincount(y))
    expected = [n / (classes * 50), n / (classes * 20), n / (classes * 5), n / (classes * 25)]
    assert class_weights("balanced", COUNTS).tolist() == pytest.approx(expected)
    assert class_weights([1, 2, 3, 4], COUNTS).tolist() == [1, 2, 3, 4]
    assert class_weights(None, COUNTS) is None


@pytest.mark.parametrize("loss", ["cross_entropy", "label_smoothing"])
def test_weighted_loss_is_torchs_weighted_mean(loss):
    logits, labels = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 0, 0, 2, 1])
    node = {"name": loss, "class_weights": "balanced", **({"smoothing": 0.1} if loss == "label_smoothing" else {})}
    w = torch.tensor([100 / 200, 100 / 80, 100 / 20, 100 / 100])
    smoothing = 0.1 if loss == "label_smoothing" else 0.0
    expected = F.cross_entropy(logits, labels, weight=w, label_smoothing=smoothing)
    assert make_loss(node, COUNTS)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    if loss == "cross_entropy":  # sum(w_y * nll) / sum(w_y), written out
        nll = -torch.log_softmax(logits, 1)[torch.arange(8), labels]
        assert expected.item() == pytest.approx((w[labels] * nll).sum().item() / w[labels].sum().item(), rel=1e-6)


def test_balanced_sampler_draws_classes_evenly():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    sampler = BalancedSampler(labels)
    g = torch.Generator().manual_seed(3)
    drawn = torch.cat([sampler.draw(g) for _ in range(20)])
    assert len(drawn) == 20 * 1000  # each draw is one epoch: as many samples as the split has
    counts = torch.bincount(labels[drawn], minlength=3)
    # the same seeded draw written out: probability 1/n_c per sample, with replacement
    g = torch.Generator().manual_seed(3)
    weights = torch.cat([torch.full((900,), 1 / 900), torch.full((90,), 1 / 90), torch.full((10,), 1 / 10)]).double()
    expected = torch.cat([torch.multinomial(weights, 1000, True, generator=g) for _ in range(20)])
    assert torch.equal(drawn, expected)
    assert ((counts - 20000 / 3).abs() < 300).all(), counts  # each class ~ a third, not 90% / 9% / 1%


def test_trainer_with_the_balanced_sampler_sees_classes_evenly():
    cfg = compose_cfg("dataset.imbalance=20", "batch_size.sampler=balanced", "epochs=30")
    data = load_splits(cfg["dataset"])
    seen = []  # the labels of every training batch, as the loss gets them
    trainer = Trainer(cfg, make_model(cfg, data.input_shape, data.num_classes), len(data.train_x),
                      torch.device("cpu"), class_counts=data.class_counts())
    loss = trainer.criterion
    trainer.criterion = lambda out, y: (seen.append(y.clone()), loss(out, y))[1]
    for epoch in range(1, 31):
        row = trainer.train_epoch(epoch, data.train_x, data.train_y)
        assert row["steps"] == -(-len(data.train_x) // 64)  # the epoch keeps its length
    counts = torch.bincount(torch.cat(seen), minlength=10).double()
    plain = data.class_counts().double()
    assert plain[0] / plain[9] >= 15  # the split is long-tailed...
    assert counts.max() / counts.min() < 1.5  # ...the batches are not


@pytest.mark.parametrize(("override", "key"), [
    ("loss.class_weights=equal", "loss.class_weights"),
    ("loss.class_weights=[1,2]", "loss.class_weights"),  # synthetic has 10 classes
    ("loss.class_weights=[0,0,0,0,0,0,0,0,0,0]", "loss.class_weights"),
    ("loss.class_weights=[-1,1,1,1,1,1,1,1,1,1]", "loss.class_weights"),
    ("+loss.class_weights=balanced loss=mse", "loss.class_weights"),
    ("batch_size.sampler=weighted", "batch_size.sampler"),
])
def test_bad_values_are_one_line(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*override.split()))
    assert e.value.key == key and "\n" not in str(e.value)


def test_balanced_weights_refuse_a_class_without_samples():
    with pytest.raises(ConfigError) as e:
        class_weights("balanced", torch.tensor([3, 0, 2]))
    assert "[1]" in str(e.value) and "\n" not in str(e.value)


def test_a_run_with_weights_and_the_sampler_completes(tmp_path):
    cfg = compose_cfg("dataset.imbalance=10", "loss.class_weights=balanced", "batch_size.sampler=balanced")
    summary = train(cfg, RunContext(tmp_path))
    assert summary["status"] == "completed" and summary["test/balanced_acc"] is not None


def test_a_killed_run_with_the_balanced_sampler_resumes_bit_exact(tmp_path, monkeypatch):
    from tests.run.test_resume import Crash, assert_same_run, crash_after

    cfg = compose_cfg("dataset.imbalance=10", "loss.class_weights=balanced", "batch_size.sampler=balanced",
                      "epochs=3")
    train(cfg, RunContext(tmp_path / "alone"))
    with monkeypatch.context() as m:
        crash_after(m, 2)
        with pytest.raises(Crash):
            train(cfg, RunContext(tmp_path / "cut"))
    train(cfg, RunContext(tmp_path / "cut", resume=True))
    assert_same_run(tmp_path / "alone", tmp_path / "cut")
