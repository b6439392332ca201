"""Every config file composes, every component it names builds, and bad values fail with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnopt_cli.config import conf_dir
from nnopt_cli.errors import ConfigError
from nnopt_cli.models import make_model
from nnopt_cli.optim.optimizers import build_optimizer
from nnopt_cli.optim.schedulers import SCHEDULER_META_KEYS, build_scheduler
from nnopt_cli.run.validate import validate
from tests.conftest import compose_cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def test_conf_dir_holds_every_group():
    groups = {p.name for p in conf_dir().iterdir() if p.is_dir()}
    assert {"model", "init", "activation", "optimizer", "scheduler", "regularizer", "batch_size",
            "grad_clip", "dataset"} <= groups


# every optimizer preset: tests/test_optimizers.py (binding, protocol, a few steps on MLP and CNN)


@pytest.mark.parametrize("sched", options("scheduler"))
def test_every_scheduler_config_builds_and_changes_the_lr(sched):
    cfg = compose_cfg(f"scheduler={sched}", "epochs=6")
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(cfg["optimizer"], model.parameters())
    scheduler, interval, monitor = build_scheduler(cfg["scheduler"], opt, total_steps=60)
    if sched == "none":
        assert scheduler is None
        return
    assert type(scheduler).__module__ == "torch.optim.lr_scheduler"
    lrs = []
    for _ in range(60 if interval == "step" else 6):
        opt.step()
        scheduler.step(1.0) if monitor else scheduler.step()  # constant metric: plateau must cut
        lrs.append(opt.param_groups[0]["lr"])
    assert len(set(lrs)) > 1, f"{sched} never changed the LR"
    assert all(k not in cfg["scheduler"] or k in SCHEDULER_META_KEYS for k in SCHEDULER_META_KEYS)


def test_warmup_cosine_rises_then_decays():
    cfg = compose_cfg("scheduler=warmup_cosine", "scheduler.warmup_fraction=0.2")
    opt = build_optimizer(cfg["optimizer"], torch.nn.Linear(2, 2).parameters())
    scheduler, interval, _ = build_scheduler(cfg["scheduler"], opt, total_steps=100)
    assert interval == "step"
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    peak = max(range(100), key=lrs.__getitem__)
    assert 18 <= peak <= 21 and lrs[0] < 0.05 * lrs[peak] and lrs[-1] < 0.01 * lrs[peak]


def test_onecycle_gets_total_steps_from_the_runner():
    cfg = compose_cfg("scheduler=onecycle")
    opt = build_optimizer(cfg["optimizer"], torch.nn.Linear(2, 2).parameters())
    scheduler, interval, _ = build_scheduler(cfg["scheduler"], opt, total_steps=37)
    assert interval == "step" and scheduler.total_steps == 37


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("act", options("activation"))
def test_every_model_builds_with_every_activation(model, act):
    # model=custom names a class of the user's: the test module's TinyNet stands in for it
    user = ["model._target_=tests.run.test_extending.TinyNet"] if model == "custom" else []
    cfg = compose_cfg(f"model={model}", f"activation={act}", *user)
    shape = (1, 40) if model == "cnn1d" else (1, 28, 28)  # cnn1d takes 1-D signals (MNIST-1D)
    net = make_model(cfg, shape, 10)
    assert net(torch.randn(3, *shape)).shape == (3, 10)


def test_any_torch_optimizer_is_reachable_by_target():
    cfg = compose_cfg("optimizer._target_=torch.optim.Adamax")
    opt = build_optimizer(cfg["optimizer"], torch.nn.Linear(2, 2).parameters())
    assert type(opt).__name__ == "Adamax"


def test_regularizers_compose_as_a_list():
    cfg = compose_cfg("regularizer=[l1,l2]")
    assert set(cfg["regularizer"]) == {"l1", "l2"}


BAD_VALUES = [
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("batch_size.size=0", "batch_size.size"),
    ("epochs=0", "epochs"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("model.hidden=[256,0]", "model.hidden"),
    ("precision=fp8", "precision"),
    ("early_stopping.enabled=true early_stopping.patience=0", "early_stopping.patience"),
    ("grad_clip=norm grad_clip.max_norm=0", "grad_clip.max_norm"),
    ("regularizer=l1 regularizer.l1.weight=-1", "regularizer.l1.weight"),
    ("regularizer=elastic regularizer.elastic.l1_ratio=2", "regularizer.elastic.l1_ratio"),
    ("batch_size=random batch_size.min_size=300 batch_size.max_size=100", "batch_size.max_size"),
    ("batch_size=double batch_size.factor=1", "batch_size.factor"),
    ("batch_size=double batch_size.instead_of_lr_decay=true", "batch_size.instead_of_lr_decay"),
    ("scheduler=exp scheduler.gamma=0", "scheduler.gamma"),
    ("epochs=abc", "epochs"),
    ("threads=0", "threads"),
]


@pytest.mark.parametrize("overrides,key", BAD_VALUES)
def test_invalid_values_name_key_value_and_allowed(overrides, key):
    cfg = compose_cfg(*overrides.split())
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert err.value.key == key and f"{key}=" in msg and ":" in msg and "\n" not in msg


def test_default_config_is_valid_and_documented():
    cfg = compose_cfg(tiny=False)
    validate(cfg)
    assert cfg["dataset"]["name"] == "mnist" and cfg["model"]["name"] == "mlp"
    # every YAML key carries a comment or is self-describing `name:` / `_target_:` (STYLE: documented keys)
    for path in Path(conf_dir()).rglob("*.yaml"):
        assert path.read_text().lstrip().startswith("#"), f"{path} does not open with a comment"
