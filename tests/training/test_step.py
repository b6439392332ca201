"""The training step against a hand-written PyTorch loop: the same bits, whatever the step can also do."""

import pytest
import torch
import torch.nn.functional as F

from nnopt_cli.data import load_splits
from nnopt_cli.models import make_model
from nnopt_cli.optim.optimizers import build_optimizer
from nnopt_cli.optim.schedulers import build_scheduler
from nnopt_cli.training.trainer import Trainer
from tests.conftest import compose_cfg


def _nnopt(cfg: dict, data) -> tuple[list[dict], dict, dict]:
    torch.manual_seed(cfg["seed"])
    model = make_model(cfg, data.input_shape, data.num_classes)
    trainer = Trainer(cfg, model, len(data.train_x), torch.device("cpu"))
    rows = []
    for epoch in (1, 2):
        rows.append(trainer.train_epoch(epoch, data.train_x, data.train_y))
        trainer.end_epoch(rows[-1])
    return rows, model.state_dict(), trainer.optimizer.state_dict()["state"]


def _plain(cfg: dict, data) -> tuple[list[dict], dict, dict]:
    """The loop every PyTorch tutorial writes, on nnopt's model, optimizer and scheduler objects."""
    torch.manual_seed(cfg["seed"])
    model = make_model(cfg, data.input_shape, data.num_classes)
    opt = build_optimizer(cfg["optimizer"], model)
    bs, n = cfg["batch_size"]["size"], len(data.train_x)
    steps = -(-n // bs) * cfg["epochs"]
    sched, interval, _ = build_scheduler(cfg["scheduler"], opt, steps)
    gen = torch.Generator().manual_seed(cfg["seed"])
    rows = []
    for _ in (1, 2):
        model.train()
        perm = torch.randperm(n, generator=gen)
        lr = opt.param_groups[0]["lr"]
        loss_sum, correct, norms = 0.0, 0, []
        for step, i in enumerate(range(0, n, bs)):
            idx = perm[i:i + bs]
            x, y = data.train_x[idx], data.train_y[idx]
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step % cfg["log_every"] == 0:
                norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
            opt.step()
            if sched is not None and interval == "step":
                sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == y).sum().item()
        if sched is not None and interval == "epoch":
            sched.step()
        rows.append({"train/loss": loss_sum / n, "train/acc": correct / n, "lr": lr,
                     "grad_norm": torch.stack(norms).mean().item()})
    return rows, model.state_dict(), opt.state_dict()["state"]


@pytest.mark.parametrize("overrides", [(), ("scheduler=onecycle", "model=cnn", "log_every=1"),
                                       ("optimizer=sgd", "scheduler=step", "dataset.n_train=400")])
def test_the_step_trains_bit_for_bit_like_a_hand_written_loop(overrides):
    cfg = compose_cfg(*overrides)
    data = load_splits(cfg["dataset"])
    rows, weights, state = _nnopt(cfg, data)
    plain_rows, plain_weights, plain_state = _plain(cfg, data)
    assert weights.keys() == plain_weights.keys()
    assert all(torch.equal(v, plain_weights[k]) for k, v in weights.items())
    assert state.keys() == plain_state.keys()
    assert all(torch.equal(v, plain_state[i][k]) for i, s in state.items() for k, v in s.items())
    for row, plain in zip(rows, plain_rows, strict=True):
        assert row["grad_norm"] == plain["grad_norm"]  # the same gradients, sampled at the same steps
        assert row["train/acc"] == plain["train/acc"] and row["lr"] == plain["lr"]
        # the same losses; nnopt sums them on the device in float64, in another order
        assert row["train/loss"] == pytest.approx(plain["train/loss"], rel=1e-12)


def test_every_mode_off_is_the_plain_step_and_on_changes_it():
    """Clipping, a penalty and LR scaling are objects that do nothing when off: turned on with
    values that cannot matter they keep the bits, with values that do they change them."""
    base = compose_cfg()
    data = load_splits(base["dataset"])
    _, weights, _ = _nnopt(base, data)
    for same in (["grad_clip=norm", "grad_clip.max_norm=1e9"], ["batch_size.lr_scaling=linear"]):
        _, w, _ = _nnopt(compose_cfg(*same), data)
        assert all(torch.equal(v, weights[k]) for k, v in w.items()), same
    for other in (["grad_clip=norm", "grad_clip.max_norm=1e-3"], ["regularizer=l2"],
                  ["batch_size.lr_scaling=linear", "batch_size.base_size=32"]):
        _, w, _ = _nnopt(compose_cfg(*other), data)
        assert any(not torch.equal(v, weights[k]) for k, v in w.items()), other
