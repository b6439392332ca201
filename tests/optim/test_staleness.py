"""async_sgd=stale: the gradient applied at step t is the one computed at step t - k."""

from __future__ import annotations

import pytest
import torch

import nnopt_cli.run.recipe as runner
from nnopt_cli.errors import ConfigError
from nnopt_cli.optim.optimizers import optimizer_step
from nnopt_cli.optim.staleness import StaleGradients
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store.checkpoint import load_checkpoint
from tests.conftest import compose_cfg
from tests.run.test_resume import assert_same_run
from tests.training.test_interrupt import StopAfter


def sgd_steps(curvatures: list[float], staleness: int, lr: float = 0.1, w0: float = 1.0) -> list[float]:
    """The weight after each step of SGD on the losses a_t * w^2 / 2 (gradient a_t * w)."""
    w = torch.nn.Parameter(torch.tensor([w0], dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=lr)
    delay = StaleGradients(staleness)
    seen = []
    for a in curvatures:
        def closure(create_graph: bool = False, a=a) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = 0.5 * a * (w * w).sum()
            loss.backward()
            return loss

        optimizer_step(opt, "plain", closure, delay=delay)
        seen.append(w.item())
    return seen


def test_staleness_one_applies_the_previous_steps_gradient_by_hand():
    a, lr = [2.0, 3.0, 5.0, 7.0], 0.1
    # step 1 queues g1 = a1 * w0 and applies nothing; step t > 1 applies g_{t-1}, computed at w_{t-2}
    w0 = 1.0
    w1 = w0
    w2 = w1 - lr * a[0] * w0
    w3 = w2 - lr * a[1] * w1
    w4 = w3 - lr * a[2] * w2
    assert [w1, w2, w3, w4] == pytest.approx([1.0, 0.8, 0.5, 0.1], rel=1e-12)
    assert sgd_steps(a, staleness=1) == pytest.approx([w1, w2, w3, w4], rel=1e-12)
    # synchronous SGD on the same losses: w_t = w_{t-1} (1 - lr a_t)
    assert sgd_steps(a, staleness=0) == pytest.approx([0.8, 0.56, 0.28, 0.084])


def test_first_k_steps_apply_nothing():
    assert sgd_steps([2.0, 3.0, 5.0, 7.0], staleness=3) == pytest.approx([1.0, 1.0, 1.0, 0.8], rel=1e-12)


STALE_RUN = ["optimizer=momentum", "epochs=2", "batch_size.size=32", "model.dropout=0.2"]


def test_staleness_zero_is_the_normal_run_bit_for_bit(tmp_path):
    train(compose_cfg(*STALE_RUN), RunContext(tmp_path / "sync"))
    train(compose_cfg(*STALE_RUN, "async_sgd=stale", "async_sgd.staleness=0"), RunContext(tmp_path / "k0"))
    assert_same_run(tmp_path / "sync", tmp_path / "k0")


def test_stale_runs_are_deterministic_and_differ_from_sync(tmp_path):
    cfg = compose_cfg(*STALE_RUN, "async_sgd=stale", "async_sgd.staleness=3")
    a = train(cfg, RunContext(tmp_path / "a"))
    train(cfg, RunContext(tmp_path / "b"))
    assert_same_run(tmp_path / "a", tmp_path / "b")
    assert a["async_sgd"] == {"mode": "stale", "staleness": 3, "bit_reproducible": True}
    sync = train(compose_cfg(*STALE_RUN), RunContext(tmp_path / "sync"))
    assert a["test/loss"] != sync["test/loss"]
    assert a["test/acc"] > 0.5  # 10 classes: still learns


def test_interrupt_mid_epoch_keeps_the_queue_and_resumes_bit_exact(tmp_path, monkeypatch):
    # 320 samples / 32 = 10 steps an epoch; the stop lands after step 5 of epoch 1, with 3 gradients queued
    cfg = compose_cfg(*STALE_RUN, "async_sgd=stale", "async_sgd.staleness=3")
    train(cfg, RunContext(tmp_path / "alone"))
    with monkeypatch.context() as m:
        m.setattr(runner, "Interrupt", lambda: StopAfter(6))
        assert train(cfg, RunContext(tmp_path / "cut"))["status"] == "interrupted"
    queued = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["trainer"]["stale_gradients"]["queue"]
    assert len(queued) == 3
    train(cfg, RunContext(tmp_path / "cut", resume=True))
    assert_same_run(tmp_path / "alone", tmp_path / "cut")


@pytest.mark.parametrize("overrides,says", [
    (["async_sgd=stale", "optimizer=lbfgs"], "async_sgd='stale': needs an optimizer with step=plain"),
    (["async_sgd=stale", "optimizer=sam"], "step=backward_closure"),
    (["async_sgd=stale", "async_sgd.staleness=-1"], "async_sgd.staleness"),
    (["async_sgd=stale", "async_sgd.staleness=1.5"], "async_sgd.staleness"),
    (["async_sgd.mode=later"], "async_sgd.mode"),
])
def test_stale_refusals_name_the_key(overrides, says):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*overrides))
    assert says in str(e.value) and "\n" not in str(e.value)
