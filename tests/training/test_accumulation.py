"""Gradient accumulation (batch_size.accumulate=k): k micro-batches then one optimizer step compute
what one step on the big batch does, and everything counted in steps counts optimizer steps."""

import os

import pytest
import torch

from nnopt_cli.data import load_splits
from nnopt_cli.errors import ConfigError
from nnopt_cli.models import make_model
from nnopt_cli.run import recipe as runner
from nnopt_cli.run.recipe import RunContext
from nnopt_cli.run.recipe import train as run_train
from nnopt_cli.run.validate import validate
from nnopt_cli.training.observers import Observer, Observers
from nnopt_cli.training.trainer import Trainer
from tests.conftest import REPO, TINY, compose_cfg
from tests.run.test_resume import assert_same_run
from tests.training.test_distributed import torchrun
from tests.training.test_interrupt import StopAfter

# 100 samples: three steps of 32 and a short last one of 4 (split into micro-batches of 1)
SMALL = ["dataset.n_train=164", "dataset.val_size=64", "epochs=2"]


class Losses(Observer):
    """The loss and batch size every optimizer step reports to observers."""

    def __init__(self):
        self.seen = []

    def before_step(self, info) -> None:
        self.seen.append((info.step, float(info.loss.detach()), info.batch_size))


def train(*overrides: str, model: tuple[str, ...] = ("model.hidden=[16]",)):
    cfg = compose_cfg(*SMALL, *model, *overrides)
    data = load_splits(cfg["dataset"])
    torch.manual_seed(cfg["seed"])
    net = make_model(cfg, data.input_shape, data.num_classes)
    watch = Losses()
    trainer = Trainer(cfg, net, len(data.train_x), torch.device("cpu"), observers=Observers({"losses": watch}))
    rows = []
    for epoch in (1, 2):
        rows.append(trainer.train_epoch(epoch, data.train_x, data.train_y))
        trainer.end_epoch(rows[-1])
    return net, trainer, rows, watch.seen


def assert_same_weights(a, b, atol=1e-6):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "momentum", "sam"])
def test_four_micro_batches_of_8_step_like_one_batch_of_32(optimizer):
    extra = [f"optimizer={optimizer}", "scheduler=cosine"]  # a per-epoch LR schedule moves too
    big_model, big, big_rows, big_seen = train(*extra, "batch_size.size=32")
    acc_model, acc, acc_rows, acc_seen = train(*extra, "batch_size.size=8", "batch_size.accumulate=4")
    assert_same_weights(big_model, acc_model)
    assert acc.counters.total_steps == big.counters.total_steps == 2 * 4  # optimizer steps, not micro-batches
    assert acc.optimizer.param_groups[0]["lr"] == pytest.approx(big.optimizer.param_groups[0]["lr"])
    for a, b in zip(acc_rows, big_rows, strict=True):
        assert a["steps"] == b["steps"] == 4 and a["batch_size"] == b["batch_size"] == 32
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
        assert a["train/acc"] == b["train/acc"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert [s[2] for s in acc_seen] == [s[2] for s in big_seen] == [32, 32, 32, 4] * 2
    assert [s[1] for s in acc_seen] == pytest.approx([s[1] for s in big_seen], rel=1e-5)


def test_per_step_schedule_clipping_and_a_penalty_count_optimizer_steps():
    extra = ["optimizer=adam", "scheduler=onecycle", "grad_clip=norm", "grad_clip.max_norm=0.05",
             "regularizer=l2", "log_every=2"]
    big_model, big, big_rows, _ = train(*extra, "batch_size.size=32")
    acc_model, acc, acc_rows, _ = train(*extra, "batch_size.size=8", "batch_size.accumulate=4")
    assert_same_weights(big_model, acc_model)
    assert acc.scheduler.last_epoch == big.scheduler.last_epoch == 8
    assert acc_rows[-1]["train/penalty"] == pytest.approx(big_rows[-1]["train/penalty"], rel=1e-5)


def test_lbfgs_closure_gets_the_whole_steps_gradient():
    # few iterations and steps: L-BFGS turns float round-off into visible differences over many (2e-4 after
    # 8 steps of 3 iterations on one thread; 2e-6 here)
    lbfgs = ("optimizer=lbfgs", "optimizer.max_iter=2", "epochs=1")
    big_model, *_ = train(*lbfgs, "batch_size.size=32")
    acc_model, acc, *_ = train(*lbfgs, "batch_size.size=8", "batch_size.accumulate=4")
    assert_same_weights(big_model, acc_model, atol=1e-4)
    assert acc.counters.forward_passes > acc.counters.total_steps  # L-BFGS evaluated more than once a step


def test_one_is_the_plain_step():
    cfg = compose_cfg()
    assert cfg["batch_size"]["accumulate"] == 1
    model = make_model(cfg, (1, 28, 28), 10)
    assert Trainer(cfg, model, 100, torch.device("cpu")).policy.epoch_sizes(0, 200) == [64, 64, 64, 8]


def test_micro_batches_keep_two_samples_for_batch_norm():
    _, trainer, rows, seen = train("batch_size.size=2", "batch_size.accumulate=3", "epochs=1",
                                   model=("model=cnn", "model.batch_norm=true", "model.channels=[2]", "model.fc=[8]"))
    # 100 = 16 steps of 6 and a last of 4: two micro-batches of 2, not three with one sample
    assert [s[2] for s in seen][-2:] == [6, 4] and rows[0]["steps"] == 17


@pytest.mark.parametrize("overrides,key", [
    (["batch_size.accumulate=0"], "batch_size.accumulate"),
    (["batch_size.accumulate=2.5"], "batch_size.accumulate"),
    (["batch_size.size=1073741824", "batch_size.accumulate=2"], "batch_size.accumulate"),  # 2^31 samples a step
    (["batch_size=random", "batch_size.accumulate=-1"], "batch_size.accumulate"),
])
def test_bad_accumulation_fails_in_one_line(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*overrides))
    assert err.value.key == key and "\n" not in str(err.value)


@pytest.mark.parametrize("policy", ["ramp", "double", "random"])
def test_every_policy_takes_accumulate(policy):
    cfg = compose_cfg(f"batch_size={policy}", "batch_size.accumulate=2")
    validate(cfg)
    plain = compose_cfg(f"batch_size={policy}")
    model = make_model(cfg, (1, 28, 28), 10)
    a = Trainer(cfg, model, 1000, torch.device("cpu")).policy.epoch_sizes(1, 10000)
    b = Trainer(plain, model, 1000, torch.device("cpu")).policy.epoch_sizes(1, 10000)
    assert a[0] == 2 * b[0] and sum(a) == sum(b) == 10000


def test_an_interrupt_lands_between_optimizer_steps_and_resumes_bit_exact(tmp_path, monkeypatch):
    # 320 samples / (8 x 4) = 10 optimizer steps an epoch: stopped after step 2 of epoch 1
    cfg = compose_cfg("epochs=2", "batch_size.size=8", "batch_size.accumulate=4", "model.dropout=0.3",
                      "scheduler=onecycle", "dataset.n_train=384", "dataset.val_size=64")
    run_train(cfg, RunContext(tmp_path / "alone"))
    with monkeypatch.context() as m:
        m.setattr(runner, "Interrupt", lambda: StopAfter(3))
        summary = run_train(cfg, RunContext(tmp_path / "cut"))
    assert summary["status"] == "interrupted"
    run_train(cfg, RunContext(tmp_path / "cut", resume=True))
    assert_same_run(tmp_path / "alone", tmp_path / "cut")


@pytest.mark.slow
def test_two_gloo_processes_accumulating_train_like_one_big_batch(tmp_path):
    # TINY's batch of 64 as 4 micro-batches of 16 (8 a rank), gradients synchronized once a step
    args = [*TINY, "dataset.noise=2.0", "batch_size.size=16", "batch_size.accumulate=4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("NNOPT_DEBUG", None)
    out = torchrun(args, tmp_path, env)
    assert out.returncode == 0, out.stderr[-3000:]
    (folder,) = {p.parent for p in (tmp_path / "outputs").rglob("summary.json")}
    run_train(compose_cfg(*args[len(TINY):], "batch_size.size=64", "batch_size.accumulate=1"),
              RunContext(run_dir=tmp_path / "single", live_progress=False))
    ddp, single = (torch.load(d / "model.pt", weights_only=True) for d in (folder, tmp_path / "single"))
    for k in single:  # plain two-rank DDP is itself ~1e-5 from one process (all-reduce round-off)
        torch.testing.assert_close(ddp[k], single[k], rtol=0, atol=5e-5, msg=k)


def test_lr_find_ramps_with_the_runs_micro_batches():
    from nnopt_cli.cli.lr_find import ramp_trainer

    cfg = compose_cfg("batch_size.size=16", "batch_size.accumulate=4")
    model = make_model(cfg, (1, 28, 28), 10)
    trainer = ramp_trainer(cfg, model, 320, torch.device("cpu"), 16, 12, accumulate=4)
    assert trainer.accumulate == 4 and trainer.policy.epoch_sizes(0, 320) == [64] * 5
    assert trainer.policy.epochs == 3  # 12 optimizer steps of 64 over 320 samples


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_loss_scaling_unscales_once_per_accumulated_step():
    extra = ["device=cuda", "precision=fp16", "optimizer=adam"]
    cfg_big = compose_cfg(*SMALL, "model.hidden=[16]", *extra, "batch_size.size=32")
    cfg_acc = compose_cfg(*SMALL, "model.hidden=[16]", *extra, "batch_size.size=8", "batch_size.accumulate=4")
    models = []
    for cfg in (cfg_big, cfg_acc):
        data = load_splits(cfg["dataset"]).to(torch.device("cuda"))
        torch.manual_seed(cfg["seed"])
        net = make_model(cfg, data.input_shape, data.num_classes).cuda()
        trainer = Trainer(cfg, net, len(data.train_x), torch.device("cuda"))
        trainer.train_epoch(1, data.train_x, data.train_y)
        models.append(net)
    assert_same_weights(*models, atol=1e-2)  # fp16 products differ with the batch's shape
