"""hydra/launcher=vectorized: runs that differ only in seed / optimizer.lr trained as one stacked model
end like the same runs trained one by one (folders, metrics, weights), diverge and stop alone, and
resume from their own checkpoints as normal runs."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store import layout
from nnopt_cli.store.folder import read_metrics
from nnopt_cli.store.layout import Status
from nnopt_cli.sweep.vectorized import plan
from nnopt_cli.training import lockstep, vectorized
from nnopt_cli.training.lockstep import Group
from tests.conftest import TINY, compose_cfg

SEEDS = (0, 1, 2, 3)


def separately(cfgs: list[dict], root: Path) -> list[Path]:
    dirs = [root / f"alone-{i}" for i in range(len(cfgs))]
    for cfg, d in zip(cfgs, dirs, strict=True):
        train(cfg, RunContext(run_dir=d))
    return dirs


def together(cfgs: list[dict], root: Path, group_class=Group) -> list[Path]:
    dirs = [root / f"member-{i}" for i in range(len(cfgs))]
    members = group_class([lambda c=c, d=d: train(c, RunContext(run_dir=d))
                           for c, d in zip(cfgs, dirs, strict=True)]).run()
    for m in members:
        assert m.error is None, m.error
    return dirs


def summary(d: Path) -> dict:
    return json.loads((d / layout.SUMMARY).read_text())


def weights(d: Path, name: str = layout.MODEL) -> dict[str, torch.Tensor]:
    return torch.load(d / name, weights_only=True)


def assert_close_rows(a: Path, b: Path, rtol: float) -> None:
    ra, rb = read_metrics(a / layout.METRICS), read_metrics(b / layout.METRICS)
    assert [r.keys() for r in ra] == [r.keys() for r in rb]
    for x, y in zip(ra, rb, strict=True):
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=rtol, abs=1e-7), key
        for key in ("epoch", "steps", "batch_size", "total_steps", "samples_seen", "forward_passes"):
            assert x[key] == y[key], key


def assert_close_weights(a: dict, b: dict, rtol: float) -> None:
    """Each tensor within rtol of its norm (rtol=0: equal)."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.linalg.vector_norm(a[k] - b[k]).item() <= rtol * torch.linalg.vector_norm(a[k]).item(), k


@pytest.mark.parametrize("optimizer, rtol", [("momentum", 1e-5), ("adam", 1e-5)])
def test_four_seeds_together_match_four_runs_alone(optimizer, rtol, tmp_path):
    cfgs = [compose_cfg(f"seed={s}", f"optimizer={optimizer}", "scheduler=exp", "epochs=2") for s in SEEDS]
    alone, joint = separately(cfgs, tmp_path), together(cfgs, tmp_path)
    for a, b in zip(alone, joint, strict=True):
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        sa, sb = summary(a), summary(b)
        assert sb.pop("vectorized") == {"members": 4, "member": joint.index(b)}
        assert sa.keys() == sb.keys() and sa["status"] == sb["status"] == Status.COMPLETED
        assert sb["test/loss"] == pytest.approx(sa["test/loss"], rel=1e-4)
        assert_close_rows(a, b, rtol=1e-4)
        # the same initial weights (built under each seed), the same final ones up to float rounding
        assert_close_weights(weights(a, layout.INIT_MODEL), weights(b, layout.INIT_MODEL), 0.0)
        # Adam's m / sqrt(v) magnifies rounding where a gradient is ~0: a looser bound after 12 steps
        assert_close_weights(weights(a), weights(b), rtol if optimizer == "momentum" else 1e-3)
    # the members are different runs: their own seeds, their own batch order
    losses = {read_metrics(b / layout.METRICS)[0]["train/loss"] for b in joint}
    assert len(losses) == len(SEEDS)


@pytest.mark.parametrize("forward", ["batched kernels", "vmap"])
def test_first_steps_match_a_run_alone(forward, tmp_path, monkeypatch):
    """After the first steps (one tiny epoch of 2 steps) Adam's weights agree to 1e-5, whether the
    members' layers run as batched kernels or (a layer without them) under vmap."""
    if forward == "vmap":
        monkeypatch.setattr(vectorized.StackedLayers, "of", classmethod(lambda cls, model: None))
    cfgs = [compose_cfg(f"seed={s}", "optimizer=adam", "epochs=1", "dataset.n_train=192") for s in SEEDS]
    alone, joint = separately(cfgs, tmp_path), together(cfgs, tmp_path)
    for a, b in zip(alone, joint, strict=True):
        assert_close_weights(weights(a), weights(b), 1e-5)
        assert_close_rows(a, b, rtol=1e-5)


@pytest.mark.parametrize("scheduler", ["none", "warmup_cosine"])  # warmup_cosine: a new LR every step
def test_lr_sweep_members_get_their_own_lr_and_a_diverging_one_stops_alone(scheduler, tmp_path):
    cfgs = [compose_cfg("seed=0", "optimizer=sgd", f"optimizer.lr={lr}", "epochs=2", f"scheduler={scheduler}")
            for lr in (0.05, 1e6, 0.2)]
    alone, joint = separately(cfgs, tmp_path), together(cfgs, tmp_path)
    assert [summary(d)["status"] for d in joint] == [Status.COMPLETED, Status.DIVERGED, Status.COMPLETED]
    diverged = summary(joint[1])
    assert diverged["diverged_at"] == summary(alone[1])["diverged_at"]
    assert not (joint[1] / layout.MODEL).exists()
    for i in (0, 2):
        if scheduler == "none":
            assert read_metrics(joint[i] / layout.METRICS)[-1]["lr"] == cfgs[i]["optimizer"]["lr"]
        assert_close_rows(alone[i], joint[i], rtol=1e-5)
        assert_close_weights(weights(alone[i]), weights(joint[i]), 1e-5)


class InterruptedAtEpoch2Step3(Group):
    """Ctrl-C arrives while the group trains step 3 of epoch 2: the stop check before step 4 sees it
    (5 steps an epoch: 320 training samples in batches of 64)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        checks = {"n": 0}
        interrupt = self.interrupt

        class Counting(type(interrupt)):
            @property
            def requested(self) -> bool:
                checks["n"] += 1
                if checks["n"] == 5 + 4:  # epoch 1's 5 checks, then epoch 2's before steps 1-4
                    self.signum = signal.SIGINT
                return self.signum is not None

        interrupt.__class__ = Counting


def test_interrupted_group_leaves_each_member_resumable_as_a_run_of_its_own(tmp_path):
    cfgs = [compose_cfg(f"seed={s}", "optimizer=momentum", "epochs=3") for s in (0, 1)]
    alone = separately(cfgs, tmp_path)
    joint = together(cfgs, tmp_path, InterruptedAtEpoch2Step3)
    for d in joint:
        s = summary(d)
        assert s["status"] == Status.INTERRUPTED and s["signal"] == "SIGINT" and s["epochs"] == 1
        assert "epoch 2, step 3" in s["message"]
        assert (d / layout.CHECKPOINT).is_file()
    for cfg, a, b in zip(cfgs, alone, joint, strict=True):
        train(cfg, RunContext(run_dir=b, resume=True))  # a normal run from the member's checkpoint
        assert summary(b)["status"] == Status.COMPLETED
        assert_close_rows(a, b, rtol=1e-5)
        assert_close_weights(weights(a), weights(b), 1e-5)


def test_interrupted_group_resumed_together_finishes_its_cut_epoch_like_runs_alone(tmp_path):
    """What a skip_completed rerun of the sweep does: every member resumes from its checkpoint, the
    group finishes the cut epoch from the same step with the sums saved, then trains on."""
    cfgs = [compose_cfg(f"seed={s}", "optimizer=adam", "epochs=3") for s in (0, 1, 2)]
    alone = separately(cfgs, tmp_path)
    joint = together(cfgs, tmp_path, InterruptedAtEpoch2Step3)
    members = Group([lambda c=c, d=d: train(c, RunContext(run_dir=d, resume=True))
                     for c, d in zip(cfgs, joint, strict=True)]).run()
    assert all(m.error is None for m in members)
    for a, b in zip(alone, joint, strict=True):
        s = summary(b)
        assert s["status"] == Status.COMPLETED and s["resumed_from_epoch"] == 1 and "vectorized" in s
        assert_close_rows(a, b, rtol=1e-5)
        assert_close_weights(weights(a), weights(b), 1e-3)


def test_jobs_that_cannot_train_together_run_alone_with_the_reason():
    base = [*TINY, "epochs=1"]
    cfgs = [compose_cfg(*base, "seed=0"), compose_cfg(*base, "seed=1"), compose_cfg(*base, "optimizer=lbfgs"),
            compose_cfg(*base, "grad_clip=norm"), compose_cfg(*base, "model.batch_norm=true"),
            compose_cfg(*base, "optimizer=sgd", "seed=4"), None]
    plans = plan(cfgs)
    assert [(p.jobs, p.alone_because) for p in plans[:1]] == [([0, 1], None)]
    reasons = {p.jobs[0]: p.alone_because for p in plans[1:]}
    assert "torch.optim.LBFGS is not element-wise" in reasons[2]
    assert reasons[3] == "grad_clip is set"
    assert "batch_norm" in reasons[4]
    assert "differs from it only in seed" in reasons[5]
    assert "does not resolve" in reasons[6]
    assert [j for p in plan(cfgs[:2] * 3, max_members=4) for j in p.jobs] == [0, 1, 2, 3, 4, 5]
    assert [len(p.jobs) for p in plan(cfgs[:2] * 3, max_members=4)] == [4, 2]


@pytest.mark.slow
def test_cli_sweep_trains_together_says_why_not_and_reruns_with_skip_completed(cli, tmp_path):
    args = ["train", "-m", "hydra/launcher=vectorized", "hydra.launcher.cpu_max_flops=null", *TINY, "epochs=1",
            "seed=0,1,2",
            "optimizer=sgd,lbfgs", "hydra.sweep.dir=sw", "skip_completed=true"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "jobs #0, #2, #4 form one vectorized group (3 members)" in first.stdout
    assert "runs on its own: optimizer torch.optim.LBFGS is not element-wise" in first.stdout
    assert "6 job(s), 6 completed" in first.stdout
    runs = sorted(p.parent for p in (tmp_path / "sw").glob(f"*/{layout.SUMMARY}"))
    assert len(runs) == 6
    assert sum("vectorized" in summary(r) for r in runs) == 3
    for r in runs:  # each job's log holds its own run's lines, though the members took turns
        log = (r / "train.log").read_text()
        assert f"run dir {r} " in log and log.count("run dir") == 1
        assert log.count("train epoch 1/1") == 1
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert "6 job(s), 6 skipped" in again.stdout


def test_tune_lr_vectorize_trains_the_grid_x_seeds_together_with_the_same_results(tmp_path, capsys, monkeypatch):
    from nnopt_cli.cli.tune_lr import run as tune_lr

    monkeypatch.setattr(lockstep, "CPU_MAX_FLOPS", None)  # the tiny data's MLP is stacked even on a CPU

    job = [o for o in TINY if not o.startswith("epochs")] + ["epochs=1"]
    args = [*job, "--optimizers", "momentum,lbfgs", "--lrs", "2", "--seeds", "2", "--grid-seeds", "2"]
    tune_lr([*args, "--dir", str(tmp_path / "alone")])
    capsys.readouterr()
    tune_lr([*args, "--dir", str(tmp_path / "joint"), "--vectorize"])
    out = capsys.readouterr().out
    assert "momentum: 4 runs trained together as one vectorized model" in out  # 2 LRs x 2 grid seeds
    assert "lbfgs: runs one by one, not vectorized: optimizer torch.optim.LBFGS is not element-wise" in out
    alone, joint = (json.loads((tmp_path / d / "tune_lr.json").read_text())["optimizers"] for d in ("alone", "joint"))
    assert joint["momentum"]["best_lr"] == alone["momentum"]["best_lr"]
    for group in ("tuned", "default"):
        assert joint["momentum"][group]["val/acc"]["values"] == pytest.approx(
            alone["momentum"][group]["val/acc"]["values"], abs=1e-6)
    runs = sorted((tmp_path / "joint" / "momentum").rglob(layout.SUMMARY))
    assert runs and all(summary(r.parent).get("vectorized") for r in runs)


@pytest.mark.parametrize("model", ["cnn1d", "cnn", "logreg"])
def test_other_models_together_match_runs_alone(model, tmp_path):
    data = (["dataset=mnist1d", "dataset.num_samples=600", "dataset.val_size=100", "device=cpu", "threads=1"]
            if model == "cnn1d" else TINY)
    cfgs = [compose_cfg(*data, f"model={model}", f"seed={s}", "optimizer=momentum", "epochs=2", tiny=False)
            for s in (0, 1, 2)]
    for a, b in zip(separately(cfgs, tmp_path), together(cfgs, tmp_path), strict=True):
        assert_close_rows(a, b, rtol=1e-4)
        assert_close_weights(weights(a), weights(b), 1e-5)


def test_on_a_cpu_a_model_too_heavy_to_gain_trains_one_by_one_with_a_line(tmp_path, caplog):
    cfgs = [compose_cfg(f"seed={s}", "optimizer=momentum") for s in (0, 1)]  # the MLP: 406,528 FLOPs a sample
    alone = separately(cfgs, tmp_path)
    caplog.set_level("INFO", logger="nnopt")
    joint = together(cfgs, tmp_path, lambda jobs: Group(jobs, cpu_max_flops=lockstep.CPU_MAX_FLOPS))
    said = [r.getMessage() for r in caplog.records if "arithmetic-bound" in r.getMessage()]
    assert said == ["vectorized: on the CPU this model (406528 forward FLOPs a sample, above cpu_max_flops=50000) "
                    "is arithmetic-bound: the 2 runs train one by one, which is faster"]
    for a, b in zip(alone, joint, strict=True):
        assert "vectorized" not in summary(b)
        assert_close_rows(a, b, rtol=0.0)  # the very runs alone

