"""fit(): the epochs every training loop of nnopt runs (the runner, post-training fine-tunes, lr-find)."""

import math

import pytest
import torch
from torch import nn

from nnopt_cli.data import load_splits
from nnopt_cli.models import make_model
from nnopt_cli.training.fit import FitHooks, fit
from nnopt_cli.training.metrics import Diverged
from nnopt_cli.training.trainer import Trainer
from tests.conftest import compose_cfg


class NaNInEval(nn.Module):
    """Trains like the model it wraps; its evaluation outputs are NaN from the given call on."""

    def __init__(self, model: nn.Module, from_eval: int):
        super().__init__()
        self.model, self.from_eval, self.evals = model, from_eval, 0

    def train(self, mode: bool = True):
        self.evals += not mode
        return super().train(mode)

    def forward(self, x):
        out = self.model(x)
        return out * math.nan if not self.training and self.evals >= self.from_eval else out


def _setup(*overrides, from_eval=2):
    cfg = compose_cfg("epochs=3", *overrides)
    data = load_splits(cfg["dataset"])
    torch.manual_seed(cfg["seed"])
    model = NaNInEval(make_model(cfg, data.input_shape, data.num_classes), from_eval)
    return cfg, data, Trainer(cfg, model, len(data.train_x), torch.device("cpu"), epochs=3)


def test_a_val_loss_that_is_not_finite_raises_diverged_before_the_row_is_written():
    cfg, data, trainer = _setup()
    rows, ends = [], []
    with pytest.raises(Diverged) as err:
        fit(trainer, data, range(1, 4), FitHooks(epoch_row=rows.append, epoch_end=ends.append))
    assert (err.value.epoch, err.value.step) == (2, rows[0]["steps"]) and math.isnan(err.value.loss)
    assert [r["epoch"] for r in rows] == [1] and len(ends) == 1  # epoch 2's row never reached a hook
    assert math.isfinite(rows[0]["val/loss"]) and rows[0]["time_s"] > 0


def test_hooks_run_in_order_and_epoch_end_stops_fit():
    cfg, data, trainer = _setup(from_eval=99)
    calls = []
    hooks = FitHooks(epoch_start=lambda e: calls.append(("start", e)),
                     measure=lambda r: calls.append(("measure", "time_s" in r)),
                     epoch_row=lambda r: calls.append(("row", r["epoch"], trainer.counters.total_steps)),
                     epoch_end=lambda r: calls.append(("end", r["epoch"])) or r["epoch"] == 2)
    fit(trainer, data, range(1, 4), hooks)
    steps = trainer.counters.total_steps // 2
    assert calls == [("start", 1), ("measure", False), ("row", 1, steps), ("end", 1),
                     ("start", 2), ("measure", False), ("row", 2, 2 * steps), ("end", 2)]


def test_without_validation_rows_have_no_val_metrics():
    cfg, data, trainer = _setup(from_eval=1)  # any evaluation would be NaN
    rows = []
    fit(trainer, data, range(1, 3), FitHooks(epoch_row=rows.append), validate=False)
    assert [r["epoch"] for r in rows] == [1, 2] and not any("val/loss" in r for r in rows)
