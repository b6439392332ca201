"""Every conf/optimizer preset builds and trains under its own protocol; the protocol keys, the
parameter-group rules, the Lookahead wrapper, the argument binding and the new schedulers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_optimizer import Lookahead
from torch import nn

from nnopt_cli.config import conf_dir
from nnopt_cli.errors import ConfigError
from nnopt_cli.optim.optimizers import (
    Protocol,
    build_optimizer,
    check_optimizer,
    optimizer_step,
    set_eval,
    set_train,
)
from nnopt_cli.optim.param_groups import Routed, split
from nnopt_cli.optim.schedulers import build_scheduler, wsd_factor
from nnopt_cli.run.validate import validate
from tests.conftest import compose_cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def tiny_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 12), nn.ReLU(), nn.Linear(12, 3))


def run_steps(model, optimizer, proto: Protocol, x, y, steps: int) -> int:
    """`steps` optimizer steps by the preset's protocol; returns how many passes the closure ran."""
    calls = 0

    def closure(create_graph: bool = False):
        nonlocal calls
        calls += 1
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward(create_graph=create_graph)
        return loss

    if proto.train_eval:
        set_train(optimizer)
    for _ in range(steps):
        optimizer_step(optimizer, proto.step, closure)
    if proto.train_eval:
        set_eval(optimizer)
    return calls


@pytest.mark.parametrize("opt", options("optimizer"))
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_every_preset_builds_and_lowers_the_loss_under_its_protocol(opt, arch):
    cfg = compose_cfg(f"optimizer={opt}")
    validate(cfg)
    proto = check_optimizer(cfg["optimizer"])
    model = tiny_mlp() if arch == "mlp" else tiny_cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 8, generator=g) if arch == "mlp" else torch.randn(48, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    optimizer = build_optimizer(cfg["optimizer"], model)
    with torch.no_grad():  # train mode: BatchNorm normalizes by the batch, so the loss measures the weights
        before = F.cross_entropy(model(x), y).item()
    calls = run_steps(model, optimizer, proto, x, y, steps=15)
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
    assert math.isfinite(after) and after < before, f"{opt}: loss {before:.4f} -> {after:.4f}"
    expected = {"plain": 15, "create_graph": 15, "backward_closure": 30}
    if proto.step == "closure":
        assert calls > 15  # L-BFGS evaluates several points per step
    else:
        assert calls == expected[proto.step]


def test_presets_state_source_paper_and_lr():
    for opt in options("optimizer"):
        text = (conf_dir() / "optimizer" / f"{opt}.yaml").read_text()
        assert text.startswith("#") and "lr:" in text, opt


def test_protocol_keys_are_read_from_the_preset():
    assert Protocol.from_config(compose_cfg("optimizer=lbfgs")["optimizer"]).step == "closure"
    assert Protocol.from_config(compose_cfg("optimizer=sam")["optimizer"]).step == "backward_closure"
    assert Protocol.from_config(compose_cfg("optimizer=sophia")["optimizer"]).step == "create_graph"
    sf = Protocol.from_config(compose_cfg("optimizer=schedulefree_adamw")["optimizer"])
    assert sf.step == "plain" and sf.train_eval and sf.bn_batches == 50
    assert Protocol.from_config(compose_cfg("optimizer=adam")["optimizer"]) == Protocol()


def test_old_presets_carry_no_protocol_keys():
    """sgd..adadelta keep their config fingerprint: no new key in their files."""
    for opt in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam", "radam", "adadelta"):
        node = compose_cfg(f"optimizer={opt}")["optimizer"]
        assert not {"step", "train_eval", "bn_batches", "param_groups", "wrapper"} & set(node), opt


BAD = [
    (["optimizer._target_=torch.optim.Rprop"], "optimizer", "takes no betas, weight_decay"),
    (["optimizer._target_=torch.nn.Linear"], "optimizer._target_", "torch.optim.Optimizer class"),
    (["optimizer._target_=torch.optim.Nope"], "optimizer._target_", "torch.optim.Optimizer class"),
    (["+optimizer.step=twice"], "optimizer.step", "one of plain, closure"),
    (["+optimizer.train_eval=1"], "optimizer.train_eval", "true or false"),
    (["optimizer=schedulefree_sgd", "optimizer.bn_batches=-1"], "optimizer.bn_batches", ">= 0"),
    (["optimizer=muon", "optimizer.param_groups.no_decay=[biases]"], "optimizer.param_groups.no_decay", "bias"),
    (["optimizer=muon", "+optimizer.param_groups.lr_scale={rest: 0}"], "optimizer.param_groups.lr_scale.rest", "> 0"),
    (["optimizer=muon", "+optimizer.param_groups.matrices.betas=[0.9,0.9]"],
     "optimizer.param_groups.matrices", "takes no betas"),
    (["optimizer=sam", "optimizer.base_optimizer._target_=torch.optim.AdamW"], "optimizer", "takes no momentum"),
    (["optimizer=lbfgs", "precision=fp16"], "optimizer.step", "GradScaler"),
    (["optimizer=lbfgs", "optimizer.history_size=0"], "optimizer.history_size", "an integer >= 1"),
    (["optimizer=muon", "optimizer.param_groups.matrices.ns_steps=500"], "optimizer", "cannot take a step"),
    (["optimizer=sophia", "optimizer.update_period=0"], "optimizer", "cannot take a step"),
    (["optimizer=sophia", "precision=fp16"], "optimizer.step", "use bf16 or fp32"),
    (["optimizer/wrapper=lookahead", "+optimizer.wrapper.kk=3"], "optimizer.wrapper", "takes no kk"),
    (["scheduler=wsd", "scheduler.decay_fraction=0.9", "scheduler.warmup_fraction=0.5"], "scheduler.decay_fraction",
     "warmup_fraction + decay_fraction <= 1"),
    (["scheduler=wsd", "scheduler.shape=cubic"], "scheduler.shape", "one of linear, cosine, sqrt"),
    (["scheduler=inverse_sqrt", "scheduler.warmup_steps=0"], "scheduler.warmup_steps", ">= 1"),
]


@pytest.mark.parametrize("overrides,key,text", BAD, ids=[b[0][-1] for b in BAD])
def test_bad_optimizer_settings_fail_with_one_line_before_training(overrides, key, text):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*overrides))
    assert e.value.key == key and text in str(e.value) and "\n" not in str(e.value)


def test_switching_target_names_the_keys_to_remove_or_just_works():
    with pytest.raises(ConfigError, match=r"remove with ~optimizer.betas ~optimizer.weight_decay"):
        validate(compose_cfg("optimizer=adam", "optimizer._target_=torch.optim.Rprop"))
    validate(compose_cfg("optimizer=adam", "optimizer._target_=torch.optim.Rprop", "~optimizer.betas",
                         "~optimizer.weight_decay"))
    cfg = compose_cfg("optimizer=adam", "optimizer._target_=torch.optim.Adamax")  # takes every adam key
    validate(cfg)
    assert type(build_optimizer(cfg["optimizer"], tiny_mlp())).__name__ == "Adamax"
    with pytest.raises(ConfigError, match="under torchrun/DDP"):
        check_optimizer(compose_cfg("optimizer=lbfgs")["optimizer"], distributed=True)
    with pytest.raises(ConfigError, match="under torchrun/DDP"):
        check_optimizer(compose_cfg("optimizer=sophia")["optimizer"], distributed=True)
    check_optimizer(compose_cfg("optimizer=sam")["optimizer"], distributed=True)  # one extra pass per rank


def test_param_groups_route_hidden_matrices_to_muon_and_the_rest_to_adamw():
    model = tiny_mlp()
    opt = build_optimizer(compose_cfg("optimizer=muon")["optimizer"], model)
    assert isinstance(opt, Routed) and set(opt.parts) == {"matrices", "rest"}
    muon, adamw = opt.parts["matrices"], opt.parts["rest"]
    assert type(muon).__name__ == "Muon" and type(adamw).__name__ == "AdamW"
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    # by hand: the two hidden Linear weights are matrices; the head (last Linear) is not
    assert ids(muon.param_groups[0]["params"]) == ids([model[0].weight, model[3].weight])
    by_name = {g["name"]: g for g in adamw.param_groups}
    assert ids(by_name["rest"]["params"]) == ids([model[5].weight])
    assert ids(by_name["no_decay"]["params"]) == ids([model[0].bias, model[1].weight, model[1].bias,
                                                      model[3].bias, model[5].bias])
    assert by_name["no_decay"]["weight_decay"] == 0.0 and by_name["rest"]["weight_decay"] == 0.01
    assert muon.param_groups[0]["lr"] == 0.02 and by_name["rest"]["lr"] == 0.001
    assert opt.param_groups == muon.param_groups + adamw.param_groups  # the very same dicts


def test_param_groups_send_conv_kernels_to_the_rest():
    model = tiny_cnn()
    groups = split(model, matrices=True, no_decay=["bias", "norm"])
    assert {id(p) for p in groups["matrices"]} == {id(model[4].weight)}
    assert {id(p) for p in groups["rest"]} == {id(model[0].weight), id(model[6].weight)}
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))


def test_lr_scale_and_no_decay_without_routing():
    cfg = compose_cfg("optimizer=adamw", "+optimizer.param_groups={no_decay: [bias], lr_scale: {no_decay: 2.0}}")
    validate(cfg)
    opt = build_optimizer(cfg["optimizer"], tiny_mlp())
    assert type(opt).__name__ == "AdamW"
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["no_decay"]["lr"] == pytest.approx(0.002) and by_name["no_decay"]["weight_decay"] == 0
    assert by_name["rest"]["lr"] == pytest.approx(0.001) and by_name["rest"]["weight_decay"] == 0.01


def test_routed_optimizer_state_round_trips_and_schedulers_reach_both_parts():
    model = tiny_mlp()
    cfg = compose_cfg("optimizer=muon", "scheduler=linear")
    opt = build_optimizer(cfg["optimizer"], model)
    sched, interval, _ = build_scheduler(cfg["scheduler"], opt, total_steps=10)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    assert opt.parts["matrices"].param_groups[0]["lr"] == pytest.approx(0.02 * 0.7)
    assert opt.parts["rest"].param_groups[0]["lr"] == pytest.approx(0.001 * 0.7)
    state = opt.state_dict()
    fresh = build_optimizer(cfg["optimizer"], model)
    fresh.load_state_dict(state)
    assert fresh.parts["rest"].param_groups[0]["lr"] == pytest.approx(0.001 * 0.7)
    key = id(model[0].weight)
    a = opt.parts["matrices"].state[model[0].weight]["momentum_buffer"]
    b = fresh.parts["matrices"].state[model[0].weight]["momentum_buffer"]
    assert key and torch.equal(a, b)


def test_lookahead_wraps_any_preset_and_matches_the_rule_by_hand():
    cfg = compose_cfg("optimizer=sgd", "optimizer/wrapper=lookahead", "optimizer.wrapper.k=3")
    validate(cfg)
    model = nn.Linear(4, 1, bias=False)
    w0 = model.weight.detach().clone()
    opt = build_optimizer(cfg["optimizer"], model)
    assert isinstance(opt, Lookahead) and type(opt.optimizer).__name__ == "SGD"
    x = torch.randn(8, 4)
    fast = w0.clone()
    for _ in range(3):  # by hand: 3 SGD steps on 0.5 * mean((x w)^2), then slow += 0.5 * (fast - slow)
        opt.zero_grad()
        model(x).pow(2).mean().mul(0.5).backward()
        opt.step()
        fast = fast - 0.1 * (fast @ x.T @ x) / 8
    assert torch.allclose(model.weight.detach(), w0 + 0.5 * (fast - w0), atol=1e-6)
    for preset in ("adam", "muon", "sam"):
        wrapped = build_optimizer(compose_cfg(f"optimizer={preset}", "optimizer/wrapper=lookahead")["optimizer"],
                                  tiny_mlp())
        assert isinstance(wrapped, Lookahead)


def test_lbfgs_with_its_closure_reaches_a_loss_closure_less_steps_cannot():
    """Ill-conditioned logistic regression: 15 L-BFGS steps vs 15 steps of the best plain Adam/SGD LR."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=g) * torch.logspace(0, 2, 10)
    y = (x @ torch.randn(10, generator=g) > 0).long()

    def train(node: dict, steps: int = 15) -> float:
        model = nn.Linear(10, 2)
        torch.nn.init.zeros_(model.weight)
        torch.nn.init.zeros_(model.bias)
        opt = build_optimizer(node, model)
        run_steps(model, opt, Protocol.from_config(node), x, y, steps)
        return F.cross_entropy(model(x), y).item()

    lbfgs = train(compose_cfg("optimizer=lbfgs")["optimizer"])
    plain = min(train(compose_cfg(f"optimizer={o}", f"optimizer.lr={lr}")["optimizer"])
                for o in ("sgd", "adam") for lr in (1e-3, 1e-2, 1e-1, 1.0))
    assert lbfgs < 0.02 and plain > 5 * lbfgs, (lbfgs, plain)
    model = nn.Linear(10, 2)
    with pytest.raises(TypeError):  # torch's own refusal: why the protocol must pass a closure
        build_optimizer(compose_cfg("optimizer=lbfgs")["optimizer"], model).step()


def test_schedule_free_eval_puts_the_average_in_the_model_and_train_restores():
    cfg = compose_cfg("optimizer=schedulefree_sgd", "optimizer.lr=0.1")
    model = tiny_mlp()
    opt = build_optimizer(cfg["optimizer"], model)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    run_steps(model, opt, Protocol.from_config(cfg["optimizer"]), x, y, 5)  # ends with set_eval
    w_eval = model[0].weight.detach().clone()
    z = opt.state[model[0].weight]["z"]
    set_train(opt)
    w_train = model[0].weight.detach().clone()
    # by hand (Defazio et al.): y = (1 - beta) z + beta x, with beta = momentum
    assert torch.allclose(w_train, 0.1 * z + 0.9 * w_eval, atol=1e-6)
    assert not torch.equal(w_eval, w_train)


def test_wsd_factor_by_hand():
    kw = dict(total_steps=100, warmup_fraction=0.1, decay_fraction=0.2, start_factor=0.0, min_factor=0.0)
    assert wsd_factor(0, shape="linear", **kw) == 0.0
    assert wsd_factor(5, shape="linear", **kw) == pytest.approx(0.5)
    assert wsd_factor(10, shape="linear", **kw) == 1.0 and wsd_factor(79, shape="linear", **kw) == 1.0
    assert wsd_factor(90, shape="linear", **kw) == pytest.approx(0.5)
    assert wsd_factor(90, shape="cosine", **kw) == pytest.approx(0.5)
    assert wsd_factor(85, shape="cosine", **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert wsd_factor(85, shape="sqrt", **kw) == pytest.approx(1 - math.sqrt(0.25))
    assert wsd_factor(100, shape="sqrt", **{**kw, "min_factor": 0.1}) == pytest.approx(0.1)


@pytest.mark.parametrize("sched", ["wsd", "linear", "inverse_sqrt", "cosine_restarts"])
def test_new_schedulers_follow_their_formula(sched):
    cfg = compose_cfg(f"scheduler={sched}", "optimizer=sgd", "epochs=7")
    validate(cfg)
    opt = build_optimizer(cfg["optimizer"], nn.Linear(2, 2).parameters())
    scheduler, interval, _ = build_scheduler(cfg["scheduler"], opt, total_steps=200)
    n = 200 if interval == "step" else 7
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    if sched == "wsd":  # no warm-up, flat to step 160, linear to 0 at 200
        assert lrs[0] == lrs[159] == 0.1 and lrs[180] == pytest.approx(0.05) and lrs[199] == pytest.approx(0.1 / 40)
    elif sched == "linear":
        assert lrs[0] == 0.1 and lrs[100] == pytest.approx(0.05) and lrs[199] == pytest.approx(0.1 / 200)
    elif sched == "inverse_sqrt":
        assert lrs[0] == pytest.approx(0.1 / 100) and lrs[98] == pytest.approx(0.1 * 99 / 100)
        assert lrs[399 // 2] == pytest.approx(0.1 * math.sqrt(100 / 200))
    else:  # T_0=2, T_mult=2: restarts at epochs 2 and 6
        assert lrs[0] == lrs[2] == lrs[6] == 0.1 and lrs[1] == pytest.approx(0.05) and lrs[4] == pytest.approx(0.05)


# ---------------------------------------------------------------------------- through the real run

# one optimizer of each protocol kind, the wrapper and parameter groups, and the evaluation-weight
# modes (schedule-free x with BatchNorm recomputed, EMA, SWA with SWALR): crash after epoch 2, resume
RESUME = {
    "plain-muon-lookahead": ["optimizer=muon", "optimizer/wrapper=lookahead", "optimizer.wrapper.k=3"],
    "closure-lbfgs": ["optimizer=lbfgs", "optimizer.max_iter=4"],
    "backward_closure-sam-agc": ["optimizer=sam", "grad_clip=agc", "model.batch_norm=true"],
    "create_graph-sophia": ["optimizer=sophia", "optimizer.update_period=2"],
    "train_eval-schedulefree-bn": ["optimizer=schedulefree_adamw", "model.batch_norm=true",
                                   "optimizer.bn_batches=2"],
    "ema-bn": ["averaging=ema", "averaging.decay=0.9", "model.batch_norm=true"],
    "swa-swalr-bn": ["optimizer=momentum", "averaging=swa", "averaging.swa_lr=0.01", "averaging.bn_batches=2",
                     "model.batch_norm=true"],
}


@pytest.mark.parametrize("case", sorted(RESUME))
def test_crash_then_resume_is_bit_exact_for_every_protocol_kind(case, tmp_path, monkeypatch):
    from nnopt_cli.run.recipe import RunContext, train
    from nnopt_cli.store.checkpoint import load_checkpoint
    from tests.run.test_resume import Crash, assert_same_run, crash_after

    cfg = compose_cfg(*RESUME[case], "epochs=4")
    assert train(cfg, RunContext(tmp_path / "alone"))["status"] == "completed"
    with monkeypatch.context() as m:
        crash_after(m, 2)
        with pytest.raises(Crash):
            train(cfg, RunContext(tmp_path / "cut"))
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 2
    assert train(cfg, RunContext(tmp_path / "cut", resume=True))["resumed_from_epoch"] == 2
    assert_same_run(tmp_path / "alone", tmp_path / "cut")


def test_the_run_counts_every_pass_a_protocol_makes(tmp_path):
    from nnopt_cli.run.recipe import RunContext, train
    from nnopt_cli.store.folder import read_metrics

    rows = {}
    for name, opt in (("adam", "optimizer=adam"), ("sam", "optimizer=sam"), ("lbfgs", "optimizer=lbfgs")):
        train(compose_cfg(opt, "epochs=1"), RunContext(tmp_path / name))
        rows[name] = read_metrics(tmp_path / name / "metrics.jsonl")[-1]
    steps = rows["adam"]["total_steps"]
    assert steps == 5 and rows["adam"]["forward_passes"] == rows["adam"]["backward_passes"] == steps
    assert rows["sam"]["forward_passes"] == rows["sam"]["backward_passes"] == 2 * steps
    assert rows["lbfgs"]["total_steps"] == steps and rows["lbfgs"]["forward_passes"] > 2 * steps


def test_lbfgs_run_reaches_a_training_loss_the_closure_less_presets_do_not(tmp_path):
    from nnopt_cli.run.recipe import RunContext, train

    def final_train_loss(*overrides: str) -> float:
        from nnopt_cli.store.folder import read_metrics

        run = tmp_path / "-".join(overrides).replace("/", "_")
        # noisy classes, full batch (320 samples): 3 optimizer steps for every optimizer
        cfg = compose_cfg(*overrides, "epochs=3", "dataset.noise=3.0", "batch_size.size=320")
        assert train(cfg, RunContext(run))["status"] == "completed"
        return read_metrics(run / "metrics.jsonl")[-1]["train/loss"]

    lbfgs = final_train_loss("optimizer=lbfgs")
    others = [final_train_loss(f"optimizer={o}") for o in ("adam", "momentum", "rprop")]
    assert lbfgs < 1e-4 and min(others) > 0.05, (lbfgs, others)


def test_averaged_weights_are_what_the_run_saves_and_the_raw_ones_resume_training(tmp_path):
    from nnopt_cli.run.recipe import RunContext, train
    from nnopt_cli.store.checkpoint import load_checkpoint

    cfg = compose_cfg("averaging=swa", "averaging.start_epoch=1", "epochs=2")
    train(cfg, RunContext(tmp_path))
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in ckpt["trainer"]["averaging"]["averaged"].items()}
    for k, v in saved.items():
        assert torch.equal(v, averaged[k]) and torch.equal(ckpt["model"][k], v), k
    raw = ckpt["trainer"]["raw_weights"]
    assert any(not torch.equal(raw[k], saved[k]) for k in saved)  # training resumes from the raw weights


@pytest.mark.slow
def test_sam_with_lookahead_and_ema_under_two_gloo_processes_trains_like_one_and_lbfgs_is_refused(tmp_path):
    import json
    import os

    from nnopt_cli.run.recipe import RunContext, train
    from nnopt_cli.store.folder import read_metrics
    from tests.conftest import REPO, TINY
    from tests.training.test_distributed import torchrun

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("NNOPT_DEBUG", None)
    args = ["dataset.noise=2.0", "epochs=2", "optimizer=sam", "optimizer/wrapper=lookahead", "averaging=ema",
            "averaging.decay=0.9"]
    out = torchrun([*TINY, *args, "hydra.run.dir=ddp"], tmp_path, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2
    ddp = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    train(compose_cfg(*args), RunContext(tmp_path / "single", live_progress=False))
    single = read_metrics(tmp_path / "single" / "metrics.jsonl")
    for a, b in zip(ddp, single, strict=True):
        assert a["forward_passes"] == b["forward_passes"] == 2 * a["total_steps"]
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-3)
    refused = torchrun([*TINY, "optimizer=lbfgs", "hydra.run.dir=lbfgs"], tmp_path, env)
    assert refused.returncode != 0 and "optimizer.step='closure': cannot run under torchrun/DDP" in refused.stderr


class Recorder(torch.optim.SGD):
    """SGD that records how it was stepped."""

    def __init__(self, params):
        super().__init__(params, lr=0.1)
        self.calls: list[str] = []

    def step(self, closure=None):
        self.calls.append("step(closure)" if closure is not None else "step()")
        return super().step(closure)


class CountingScaler:
    """GradScaler's part in the step: it takes optimizer.step()'s place."""

    def __init__(self):
        self.steps = 0

    def step(self, optimizer):
        self.steps += 1
        optimizer.step()


@pytest.mark.parametrize("kind,closure_calls,calls,scaled", [
    ("plain", 1, ["step()"], 1),
    ("create_graph", 1, ["step()"], 1),
    ("backward_closure", 2, ["step(closure)"], 0),  # SAM: the gradient, then the closure's second pass
    ("closure", 1, ["step(closure)"], 0),  # the optimizer calls the closure itself (SGD: once)
])
def test_optimizer_step_dispatches_each_protocol_in_one_place(kind, closure_calls, calls, scaled):
    model = tiny_mlp()
    opt, scaler = Recorder(model.parameters()), CountingScaler()
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
    seen = []

    def closure(create_graph: bool = False):
        seen.append(create_graph)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward(create_graph=create_graph)
        return loss

    optimizer_step(opt, kind, closure, scaler)
    assert len(seen) == closure_calls and seen[0] == (kind == "create_graph")
    assert opt.calls == calls and scaler.steps == scaled
