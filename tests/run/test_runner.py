"""The runner end to end in-process on tiny synthetic data: files written, every option runs."""

from __future__ import annotations

import json

import pytest
import torch

from nnopt_cli.errors import ConfigError
from nnopt_cli.models import make_model
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store.folder import read_metrics
from tests.conftest import compose_cfg

METRIC_KEYS = {"epoch", "train/loss", "train/acc", "val/loss", "val/acc", "lr", "batch_size", "grad_norm", "time_s"}


def run(tmp_path, *overrides):
    cfg = compose_cfg(*overrides)
    summary = train(cfg, RunContext(run_dir=tmp_path, live_progress=False))
    return cfg, summary, read_metrics(tmp_path / "metrics.jsonl")


def test_run_folder_contract(tmp_path):
    cfg, summary, rows = run(tmp_path, "epochs=3")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(METRIC_KEYS <= r.keys() for r in rows)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("status", "test/loss", "test/acc", "params", "epochs", "train_time_s", "device", "versions", "git_sha"):
        assert key in on_disk, key
    assert on_disk["status"] == "completed" and on_disk["epochs"] == 3
    assert on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["test/acc"] > 0.5  # 10 classes: chance is 0.1
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    model = make_model(cfg, (1, 28, 28), 10)
    model.load_state_dict(state)
    assert sum(v.numel() for v in state.values()) == on_disk["params"]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]


OPTION_SETS = [
    ["model=cnn", "model.channels=[4,8]", "model.fc=[16]", "model.batch_norm=true", "model.dropout=0.1"],
    ["model.hidden=[32,16]", "model.batch_norm=true", "model.dropout=0.2"],
    *[[f"init={i}", f"activation={a}"] for i, a in [("xavier_uniform", "tanh"), ("xavier_normal", "sigmoid"),
                                                     ("kaiming_uniform", "leaky_relu"), ("kaiming_normal", "relu"),
                                                     ("orthogonal", "elu"), ("default", "gelu"), ("kaiming_normal", "silu")]],
    *[[f"optimizer={o}"] for o in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam",
                                   "radam", "adadelta")],
    *[[f"scheduler={s}", "epochs=3"] for s in ("exp", "step", "multistep", "cosine", "onecycle", "plateau",
                                                "warmup_cosine")],
    ["regularizer=[l1,l2]"], ["regularizer=elastic"],
    ["batch_size=ramp", "batch_size.start=16", "batch_size.end=128", "batch_size.lr_scaling=linear"],
    ["batch_size=double", "batch_size.lr_scaling=sqrt"],
    ["batch_size=random", "batch_size.min_size=8", "batch_size.max_size=64", "batch_size.lr_scaling=linear"],
    ["grad_clip=norm"], ["grad_clip=value"],
    ["precision=bf16"], ["deterministic=true"],
    ["early_stopping.enabled=true"],
]


@pytest.mark.parametrize("overrides", OPTION_SETS, ids=lambda o: " ".join(o))
def test_every_option_trains(tmp_path, overrides):
    _, summary, rows = run(tmp_path, *overrides)
    assert summary["status"] == "completed", summary
    assert rows and all(r["train/loss"] == r["train/loss"] for r in rows)  # no NaN
    assert summary["test/acc"] > 0.15, f"{overrides} did not learn: {summary['test/acc']}"


def test_schedulers_drive_the_logged_lr(tmp_path):
    _, _, rows = run(tmp_path, "scheduler=exp", "scheduler.gamma=0.5", "epochs=3", "optimizer.lr=0.01")
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.005, 0.0025])


def test_plateau_cuts_the_lr_when_val_loss_stalls(tmp_path):
    # lr so small nothing improves measurably beyond min threshold -> cut after patience
    _, _, rows = run(tmp_path, "scheduler=plateau", "scheduler.patience=0", "scheduler.threshold=10",
                     "epochs=3", "optimizer.lr=0.001")
    assert rows[2]["lr"] < rows[0]["lr"]


def test_batch_growth_instead_of_lr_decay(tmp_path):
    _, _, rows = run(tmp_path, "batch_size=double", "batch_size.size=16", "batch_size.instead_of_lr_decay=true",
                     "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5", "epochs=4")
    assert [r["batch_size"] for r in rows] == [16, 16, 32, 32]
    assert len({r["lr"] for r in rows}) == 1  # the LR is never decayed


def test_l1_penalty_shrinks_weights(tmp_path):
    _, plain, _ = run(tmp_path / "a", "epochs=2")
    _, l1, rows = run(tmp_path / "b", "epochs=2", "regularizer=l1", "regularizer.l1.weight=1e-2")
    norm = lambda p: sum(v.abs().sum().item() for k, v in torch.load(p / "model.pt", weights_only=True).items()
                         if k.endswith("weight"))
    assert norm(tmp_path / "b") < 0.8 * norm(tmp_path / "a")
    assert rows[0]["train/penalty"] > 0


def test_gradient_clipping_by_norm_reports_the_pre_clip_norm(tmp_path):
    _, _, rows = run(tmp_path, "grad_clip=norm", "grad_clip.max_norm=0.01", "log_every=1")
    assert all(r["grad_norm"] > 0.01 for r in rows)


def test_divergence_stops_with_status_and_keeps_metrics(tmp_path):
    _, summary, rows = run(tmp_path, "optimizer=sgd", "optimizer.lr=1e12", "epochs=3")
    assert summary["status"] == "diverged" and "diverged" in summary["message"]
    assert summary["diverged_at"]["epoch"] >= 1
    assert len(rows) == summary["diverged_at"]["epoch"] - 1  # finished epochs only
    assert not (tmp_path / "model.pt").exists()


def test_early_stopping_restores_the_best_epoch(tmp_path):
    _, summary, rows = run(tmp_path, "epochs=6", "early_stopping.enabled=true", "early_stopping.monitor=val/acc",
                           "early_stopping.mode=max", "early_stopping.patience=1", "early_stopping.min_delta=0.5")
    assert summary["stop_reason"] == "early_stopping" and len(rows) == 2
    assert summary["restored_epoch"] == 1


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="precision='fp16'.*CUDA"):
        run(tmp_path, "precision=fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_gpu_is_refused(tmp_path, device):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run(tmp_path, f"device={device}")


def test_threads_are_capped_for_parallel_jobs(tmp_path):
    from nnopt_cli.training.device import available_cores, configure_threads

    assert configure_threads(None, parallel_jobs=available_cores()) == 1
    assert torch.get_num_threads() == 1
    assert configure_threads(3) == 3


def test_same_seed_same_result(tmp_path):
    _, a, ra = run(tmp_path / "a", "seed=7")
    _, b, rb = run(tmp_path / "b", "seed=7")
    _, c, _ = run(tmp_path / "c", "seed=8")
    assert [r["train/loss"] for r in ra] == [r["train/loss"] for r in rb]
    assert a["test/loss"] == b["test/loss"] != c["test/loss"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_path(tmp_path, precision):
    _, summary, _ = run(tmp_path, "device=cuda", f"precision={precision}")
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")


def test_logged_lr_is_the_lr_the_steps_used_with_batch_size_scaling(tmp_path):
    # size 64 against base_size 16 with linear scaling: every full step ran at 4x the optimizer's LR;
    # 320 training samples = 5 full batches, so the epoch's mean factor is exactly 4
    cfg = compose_cfg("optimizer=sgd", "optimizer.lr=0.01", "batch_size.lr_scaling=linear", "batch_size.base_size=16",
                      "dataset.n_train=384", "dataset.val_size=64", "epochs=1")
    train(cfg, RunContext(tmp_path))
    (row,) = read_metrics(tmp_path / "metrics.jsonl")
    assert row["lr"] == pytest.approx(0.04)
