"""The common step's one-frame path (Trainer._lean_step) against the general step: same bits."""

import pytest
import torch

from nnopt_cli.data import load_splits
from nnopt_cli.models import make_model
from nnopt_cli.training.observers import build_observers
from nnopt_cli.training.trainer import Trainer
from tests.conftest import compose_cfg


def _train(cfg: dict, lean: bool) -> tuple[list[dict], dict, dict]:
    data = load_splits(cfg["dataset"])
    torch.manual_seed(cfg["seed"])
    model = make_model(cfg, data.input_shape, data.num_classes)
    trainer = Trainer(cfg, model, len(data.train_x), torch.device("cpu"))
    assert trainer.lean  # what the test is about: the default config takes the lean path
    trainer.lean = lean
    rows = [trainer.train_epoch(e, data.train_x, data.train_y) for e in (1, 2)]
    return rows, model.state_dict(), trainer.optimizer.state_dict()["state"]


@pytest.mark.parametrize("overrides", [(), ("scheduler=onecycle", "model=cnn", "log_every=1")])
def test_the_lean_step_trains_bit_for_bit_like_the_general_step(overrides):
    cfg = compose_cfg(*overrides)
    lean_rows, lean_weights, lean_state = _train(cfg, lean=True)
    rows, weights, state = _train(cfg, lean=False)
    assert lean_rows == rows  # train/loss, train/acc, grad_norm (sampled every log_every steps), lr
    assert all(torch.equal(v, weights[k]) for k, v in lean_weights.items())
    assert all(torch.equal(v, state[i][k]) for i, s in lean_state.items() for k, v in s.items())


@pytest.mark.parametrize("override", ["grad_clip=norm", "regularizer=l2", "precision=bf16", "optimizer=sam",
                                      "batch_size.lr_scaling=linear", "diagnostics=basic"])
def test_anything_beyond_forward_loss_backward_step_takes_the_general_step(override):
    cfg = compose_cfg(override)
    data = load_splits(cfg["dataset"])
    model = make_model(cfg, data.input_shape, data.num_classes)
    trainer = Trainer(cfg, model, len(data.train_x), torch.device("cpu"), observers=build_observers(cfg))
    assert not trainer.lean
