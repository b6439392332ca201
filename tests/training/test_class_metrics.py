"""Per-class accuracy, balanced accuracy and macro-F1 of the val/test evaluation, against the
confusion-matrix arithmetic written out here; a run reports them in metrics.jsonl and summary.json."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store.folder import read_metrics
from nnopt_cli.training.metrics import evaluate, evaluate_split
from tests.conftest import compose_cfg

# 4 classes; class 3 is never the truth but is predicted once
TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 0]
PRED = [0, 0, 1, 3, 1, 0, 2, 2, 1, 0]


def logits_for(pred: list[int], classes: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(pred), classes).float() * 5


def test_balanced_accuracy_and_macro_f1_by_hand():
    got = evaluate_split(nn.Identity(), logits_for(PRED), torch.tensor(TRUE), batch_size=3)
    # recall per true class: 0: 3 of 5, 1: 1 of 2, 2: 2 of 3 (class 3 has no sample: left out)
    assert got["class_acc"] == pytest.approx({"0": 3 / 5, "1": 1 / 2, "2": 2 / 3})
    assert got["balanced_acc"] == pytest.approx((3 / 5 + 1 / 2 + 2 / 3) / 3)
    # F1 = 2tp / (2tp + fp + fn) per class present in the truth or the predictions
    # 0: tp 3, fp 1 (a 1 taken for 0), fn 2;  1: tp 1, fp 2, fn 1;  2: tp 2, fp 0, fn 1;  3: tp 0, fp 1, fn 0
    f1 = [6 / (6 + 1 + 2), 2 / (2 + 2 + 1), 4 / (4 + 0 + 1), 0 / (0 + 1 + 0)]
    assert got["macro_f1"] == pytest.approx(sum(f1) / 4)
    assert got["acc"] == pytest.approx(6 / 10)
    assert evaluate(nn.Identity(), logits_for(PRED), torch.tensor(TRUE), 3)[1] == pytest.approx(6 / 10)


def test_a_run_reports_them_for_val_and_test(tmp_path):
    summary = train(compose_cfg("dataset.imbalance=5", "epochs=1"), RunContext(tmp_path))
    row = read_metrics(tmp_path / "metrics.jsonl")[-1]
    for where in (row, {k.replace("test/", "val/"): v for k, v in summary.items()}):
        assert 0 <= where["val/balanced_acc"] <= 1 and 0 <= where["val/macro_f1"] <= 1
        per_class = where["val/class_acc"]
        assert sorted(per_class, key=int) == [str(c) for c in range(10)]
        assert where["val/balanced_acc"] == pytest.approx(sum(per_class.values()) / 10)
    counts = summary["data"]["train_class_counts"]
    assert counts[9] == math.floor(counts[0] / 5)
