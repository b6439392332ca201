"""Many small models trained as one: the epoch of a group of runs that differ only in seed (and LR).

Each member is a complete run with its own Trainer (model built under its seed, optimizer, scheduler,
batch-order generator, counters): train_epoch() below takes the place of Trainer.train_epoch for all of
them at once, the way the PyTorch model-ensembling tutorial does it. The members' parameters are stacked
(torch.func.stack_module_state: one leading member dimension), the forward runs every member's layers
as one batched kernel each (StackedLayers: torch.baddbmm, grouped convolutions; vmap(functional_call)
for other layers), each member's batch is its own (its generator, its order: the stacked batch is
indexed per member), and the loss is the sum over members of each member's batch mean, so each
member's slice of the gradient is exactly its own gradient.

One optimizer of the members' class steps the stacked tensors. For element-wise optimizers (SGD with or
without momentum, Adam, AdamW, RMSprop, Lion: ELEMENTWISE) that is exactly one optimizer per member.
Their update is also linear in the LR given their state, so members whose LR differs (an LR sweep, or
different schedules) step with LR 1 and each member's update is scaled by its own LR.

At the end of the epoch (or at an interrupt) every member's model, optimizer state and epoch sums get
their slice back, so the run's recipe evaluates, logs, checkpoints and resumes each member exactly as
a run of its own: the checkpoint is the normal format. A member whose loss turns non-finite gets
Diverged; the others go on. why_not() says which configs cannot train this way (then one by one).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from nnopt_cli.optim.optimizers import current_lr
from nnopt_cli.training import distributed
from nnopt_cli.training.interrupt import Interrupted
from nnopt_cli.training.loss import LABEL_SMOOTHING
from nnopt_cli.training.metrics import Diverged, EpochSums
from nnopt_cli.training.observers import Observer

# optimizers whose step treats every number of a tensor on its own (so a stacked tensor is one
# optimizer per member) and whose update is linear in the LR given their state
ELEMENTWISE = ("torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.RMSprop",
               "pytorch_optimizer.Lion")
# the element-wise optimizers torch has a fused (one kernel) implementation of, on the CPU too
FUSED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
LOSSES = ("cross_entropy", "label_smoothing")
MODELS = ("mlp", "cnn1d", "cnn")
# schedulers that also change other settings than the LR (OneCycle's momentum) are left out
SCHEDULERS = ("none", "cosine", "cosine_restarts", "exp", "inverse_sqrt", "linear", "multistep", "plateau",
              "step", "warmup_cosine", "wsd")


def why_not(cfg: dict) -> str | None:
    """Why the run `cfg` describes cannot train as a member of a vectorized group; None if it can."""
    opt = cfg["optimizer"]
    if opt.get("_target_") not in ELEMENTWISE:
        return f"optimizer {opt.get('_target_')} is not element-wise (vectorized: SGD, momentum, Adam, AdamW, " \
               "RMSprop, Lion)"
    for key in ("param_groups", "wrapper"):
        if opt.get(key):
            return f"optimizer.{key} is set"
    if opt.get("step", "plain") != "plain" or opt.get("train_eval"):
        return "the optimizer takes a closure or evaluation weights"
    model = cfg["model"]
    if model.get("_target_") is not None or model.get("name") not in MODELS:
        return f"model {model.get('_target_') or model.get('name')} (vectorized: {', '.join(MODELS)})"
    if model.get("batch_norm"):
        return "model.batch_norm=true (batch statistics)"
    if model.get("dropout"):
        return "model.dropout > 0 (a separate run's dropout masks come from one global stream)"
    checks = [
        ((cfg.get("loss") or {}).get("name", "cross_entropy") in LOSSES, f"loss {(cfg.get('loss') or {}).get('name')}"),
        ((cfg.get("scheduler") or {}).get("name", "none") in SCHEDULERS,
         f"scheduler {(cfg.get('scheduler') or {}).get('name')}"),
        (cfg["grad_clip"].get("mode", "none") == "none", "grad_clip is set"),
        (not cfg.get("regularizer"), "regularizer is set"),
        (cfg["precision"] == "fp32", f"precision={cfg['precision']}"),
        (not cfg["early_stopping"].get("enabled"), "early stopping"),
        ((cfg.get("averaging") or {}).get("name", "none") in (None, "none"), "weight averaging"),
        (not cfg.get("post"), "post-training stages"),
        (not cfg.get("diagnostics"), "diagnostics"),
        (not cfg.get("logger"), "a logger"),
        (not cfg.get("observers"), "observers"),
        (not cfg.get("eval_every_steps"), "eval_every_steps"),
        (cfg["batch_size"].get("policy") == "fixed" and cfg["batch_size"].get("lr_scaling", "none") == "none",
         "a batch-size policy"),
        (not cfg.get("freeze"), "freeze"),
        (cfg.get("continue_from") is None, "continue_from"),
        (cfg["checkpoint"].get("keep", "last") != "best", "checkpoint.keep=best"),
        ((cfg.get("async_sgd") or {}).get("mode", "none") == "none", "async_sgd"),
        (cfg["batch_size"].get("accumulate", 1) == 1, "gradient accumulation"),
        (cfg["batch_size"].get("sampler", "random") == "random", "batch_size.sampler=balanced"),
        ((cfg.get("loss") or {}).get("class_weights") is None, "loss.class_weights"),
        (cfg["dataset"].get("name") != "regression", "dataset=regression (no accuracy to stack)"),
    ]
    return next((why for ok, why in checks if not ok), None)


class StackedSums:
    """EpochSums for every member at once (one leading member dimension): the same grouping of the
    float64 loss sums, so member(i) is the EpochSums the member's own epoch would hold."""

    def __init__(self, parts: list[dict | None], device: torch.device):
        members = [EpochSums.resumed(p, device) if p is not None else EpochSums(device) for p in parts]
        self.device = device
        self.loss = torch.stack([s.loss for s in members])
        self.correct_so_far = torch.stack([s._correct for s in members])
        self.losses: list[torch.Tensor] = [torch.stack(ls) for ls in zip(*[s._losses for s in members], strict=True)]
        self.shares: list[float] = list(members[0]._shares)
        self.grad_norms: list[torch.Tensor] = [torch.stack(gs) for gs in zip(*[s.grad_norms for s in members], strict=True)]
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.held = 0  # numbers of one member's logits not counted yet

    def add_step(self, out: torch.Tensor, y: torch.Tensor, losses: torch.Tensor, share: float,
                 grad_norms: torch.Tensor | None) -> None:
        if grad_norms is not None:
            self.grad_norms.append(grad_norms)
        self.losses.append(losses.detach())
        self.shares.append(share)
        self.logits.append(out.detach())
        self.labels.append(y)
        self.held += out[0].numel()
        if len(self.losses) == EpochSums.KEEP_STEPS:
            self.loss, self.losses, self.shares = self.loss_sum(), [], []
            self.correct()
        elif self.held >= EpochSums.KEEP_ELEMENTS:
            self.correct()

    def loss_sum(self) -> torch.Tensor:
        if not self.losses:
            return self.loss
        shares = torch.tensor(self.shares, dtype=torch.float64, device=self.device)
        return self.loss + shares @ torch.stack(self.losses).double()

    def correct(self) -> torch.Tensor:
        if self.logits:
            hits = torch.cat(self.logits, dim=1).argmax(2) == torch.cat(self.labels, dim=1)
            self.correct_so_far = self.correct_so_far + hits.sum(1)
            self.logits, self.labels, self.held = [], [], 0
        return self.correct_so_far

    def member(self, i: int) -> EpochSums:
        """Member i's EpochSums (for its checkpoint's cut of the epoch)."""
        s = EpochSums(self.device)
        s.loss = self.loss[i].clone()
        s._correct = self.correct()[i].clone()
        s._losses = [t[i] for t in self.losses]
        s._shares = list(self.shares)
        s.grad_norms = [g[i] for g in self.grad_norms]
        return s


class StackedLayers:
    """The members' nn.Sequential run on their stacked parameters by batched kernels: a Linear is one
    torch.baddbmm over the members, a convolution one grouped convolution with the members side by side
    as groups of channels. The same arithmetic as each member's own layers, without vmap's per-operator
    dispatch (on a CPU that costs as much as the small members' own arithmetic). of() returns None for a
    model with any other layer; vmap(functional_call) runs those."""

    ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity)
    CONVS = (nn.Conv1d, nn.Conv2d)
    POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)

    def __init__(self, layers: list[tuple[str, nn.Module]]):
        self.layers = layers

    @classmethod
    def of(cls, model: nn.Module) -> StackedLayers | None:
        if not isinstance(model, nn.Sequential):
            return None
        layers = list(model.named_children())
        for _, layer in layers:
            if isinstance(layer, nn.Flatten):
                if layer.start_dim != 1 or layer.end_dim != -1:
                    return None
            elif isinstance(layer, cls.CONVS):
                if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                    return None
            elif not isinstance(layer, (nn.Linear, *cls.POOLS, *cls.ELEMENTWISE)):
                return None
        return cls(layers)

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        members = x.shape[0]
        # two layouts: (members, batch, *features) for Linear and Flatten, and (batch, members * channels,
        # *positions) for convolutions and pooling, kept between consecutive convolutions
        channels_layout = False

        def to_members(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], members, -1, *t.shape[2:]).transpose(0, 1)

        def to_channels(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(0, 1).reshape(t.shape[1], -1, *t.shape[3:])

        for name, layer in self.layers:
            if isinstance(layer, self.ELEMENTWISE):
                x = layer(x)
            elif isinstance(layer, nn.Flatten):
                x = (to_members(x) if channels_layout else x).flatten(2)
                channels_layout = False
            elif isinstance(layer, nn.Linear):
                if channels_layout:
                    x, channels_layout = to_members(x), False
                w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
                flat = x.reshape(members, -1, x.shape[-1])
                out = torch.bmm(flat, w.transpose(1, 2)) if b is None else \
                    torch.baddbmm(b.unsqueeze(1), flat, w.transpose(1, 2))
                x = out.reshape(*x.shape[:-1], w.shape[1])
            else:
                if not channels_layout:
                    x, channels_layout = to_channels(x), True
                if isinstance(layer, self.CONVS):
                    w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
                    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
                    x = conv(x, w.flatten(0, 1), None if b is None else b.flatten(), layer.stride, layer.padding,
                             layer.dilation, layer.groups * members)
                else:
                    x = layer(x)
        return to_members(x) if channels_layout else x


class Stack:
    """The members' parameters and optimizer state as stacked tensors, and back."""

    def __init__(self, trainers: list):
        self.trainers = trainers
        first = trainers[0].model
        self.names = [n for n, _ in first.named_parameters()]
        per_member = [dict(t.model.named_parameters()) for t in trainers]
        self.member_params = [[pm[n] for n in self.names] for pm in per_member]
        # new leaf tensors (members, *shape), copies of the members' weights
        self.params, self.buffers = stack_module_state([t.model for t in trainers])
        self.skeleton = copy.deepcopy(first).to("meta")
        self.layers = StackedLayers.of(self.skeleton)
        self.optimizer = self._optimizer()

    def _optimizer(self) -> torch.optim.Optimizer:
        """One optimizer of the members' class over the stacked tensors, with their state stacked."""
        first = self.trainers[0].optimizer
        name_of = {id(p): n for n, p in self.trainers[0].model.named_parameters()}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [self.params[name_of[id(p)]] for p in g["params"]]} for g in first.param_groups]
        if isinstance(first, FUSED) and all(g.get("fused") is None and not g.get("differentiable") for g in groups):
            # torch's one-kernel step for the few large stacked tensors: the same update (up to float
            # rounding), where the per-tensor loop's elementwise calls were 10-20% of a stacked step
            groups = [{**g, "fused": True, "foreach": False} for g in groups]
        opt = type(first)(groups)
        for j, name in enumerate(self.names):
            states = [t.optimizer.state.get(mp[j]) for t, mp in zip(self.trainers, self.member_params, strict=True)]
            if not states[0]:
                continue
            shape = self.member_params[0][j].shape
            opt.state[self.params[name]] = {
                k: (torch.stack([s[k] for s in states]) if _per_number(v, shape, k) else
                    v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                for k, v in states[0].items()}
        return opt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(members, batch, *sample) -> (members, batch, classes)."""
        if self.layers is not None:
            return self.layers(self.params, x)

        def one(params, buffers, xb):
            return functional_call(self.skeleton, (params, buffers), (xb,))
        return vmap(one)(self.params, self.buffers, x)

    def write_back(self) -> None:
        """Each member's model and optimizer get their slice: a checkpoint of theirs is the normal one."""
        with torch.no_grad():
            for i, (t, mp) in enumerate(zip(self.trainers, self.member_params, strict=True)):
                for j, name in enumerate(self.names):
                    mp[j].copy_(self.params[name][i])
                    state = self.optimizer.state.get(self.params[name])
                    if state:
                        shape = mp[j].shape
                        t.optimizer.state[mp[j]] = {
                            k: (v[i].clone() if _per_number(v, (len(self.trainers), *shape), k) else
                                v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                            for k, v in state.items()}
                for g_member, g_stack in zip(t.optimizer.param_groups, self.optimizer.param_groups, strict=True):
                    for k, v in g_stack.items():  # counters kept in the group (Lion's step)
                        if k not in ("params", "lr", "initial_lr"):
                            g_member[k] = copy.deepcopy(v)


def _per_number(v: Any, shape: torch.Size | tuple, key: str) -> bool:
    return isinstance(v, torch.Tensor) and key != "step" and tuple(v.shape) == tuple(shape)


def members_loss(node: dict | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(outputs (members, batch, classes), labels (members, batch)) -> each member's batch-mean loss:
    the cross-entropy (label-smoothed or not: LOSSES) of every sample in one call, then the mean per
    member, which is what the member's own F.cross_entropy(reduction="mean") computes."""
    node = node or {"name": "cross_entropy"}
    smoothing = node.get("smoothing", LABEL_SMOOTHING) if node["name"] == "label_smoothing" else 0.0

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        each = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none", label_smoothing=smoothing)
        return each.view(y.shape).mean(1)
    return loss


def _grad_norms(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each member's global gradient L2 norm (GradClip's sampled grad_norm), shape (members,)."""
    norms = [p.grad.flatten(1).norm(dim=1) for p in params.values() if p.grad is not None]
    return torch.stack(norms).norm(dim=0)


def train_epoch(trainers: list, epoch: int, x_all: torch.Tensor, y_all: torch.Tensor,
                should_stop: Callable[[], bool] = lambda: False, progress: list | None = None
                ) -> list[dict | BaseException]:
    """One epoch of every member (Trainers built from configs that why_not() accepts, at the same
    epoch and step): for each member its epoch row, as Trainer.train_epoch returns it, or the
    Diverged / Interrupted its own train_epoch would have raised."""
    t_start = time.perf_counter()
    m, n, first = len(trainers), len(x_all), trainers[0]
    sizes = first.policy.epoch_sizes(epoch - 1, n)
    parts, orders, order_states, base_lrs = [], [], [], []
    for t in trainers:
        t.watching, t.epoch = Observer(), epoch
        t.optimizer._opt_called = True  # stepped through the stack: its scheduler need not warn
        t.weights.to_training()
        t.model.train()
        part = t.partial if t.partial and t.partial["epoch"] == epoch else None
        t.partial = None
        if part is not None:
            t.generator.set_state(part["generator"])
        parts.append(part)
        order_states.append(t.generator.get_state())
        # the member's own order, drawn the way its Trainer draws it
        orders.append(torch.cat([idx for _, idx in distributed.epoch_batches(n, sizes, t.generator)]))
        base_lrs.append(current_lr(t.optimizer) if part is None else part["base_lr"])
    for p in progress or []:
        if p is not None:
            p.start_epoch(epoch, len(sizes))
    done_steps = parts[0]["step"] if parts[0] is not None else 0
    order = torch.stack(orders)  # (members, samples)
    stack = Stack(trainers)
    sums = StackedSums(parts, first.device)
    results: list[dict | BaseException | None] = [None] * m
    active = list(range(m))
    step_schedule = first.scheduler is not None and first.interval == "step"
    criterion = members_loss(first.cfg.get("loss"))
    pos = sum(sizes[:done_steps])
    for step, bs in enumerate(sizes, start=1):
        if step <= done_steps:
            continue
        if should_stop():
            _interrupt(trainers, active, results, sums, epoch, step - 1, order_states, base_lrs, t_start)
            break
        idx = order[:, pos:pos + bs]
        pos += bs
        x, y = x_all[idx], y_all[idx]
        out = stack.forward(x)
        losses = criterion(out, y)
        stack.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        measure = (step - 1) % first.log_every == 0
        norms = _grad_norms(stack.params) if measure else None
        _optimizer_step(stack, trainers)
        for i in active:
            t = trainers[i]
            if step_schedule:
                t._schedule_step()
            c = t.counters
            c.total_steps += 1
            c.samples_seen += bs
            c.forward_passes += 1
            c.backward_passes += 1
        sums.add_step(out, y, losses, bs, norms)
        if step % first.check_every == 0 or step == len(sizes):
            for i, value in enumerate(losses.tolist()):
                if i in active and not math.isfinite(value):
                    results[i] = Diverged(epoch, step, value)
                    active.remove(i)
        if not active:
            break
    stack.write_back()
    elapsed = time.perf_counter() - t_start
    for i in active:
        if results[i] is not None:
            continue
        t = trainers[i]
        t.weights.to_evaluation(x_all, sizes[0])
        t.counters.train_s += elapsed
        s = sums.member(i)
        results[i] = {
            "train/loss": s.loss_sum().item() / n,
            "train/acc": s.correct().item() / n,
            "lr": t.policy.epoch_lr(base_lrs[i], sizes),
            "batch_size": sizes[0],
            "steps": len(sizes),
            "grad_norm": torch.stack(s.grad_norms).mean().item() if s.grad_norms else None,
        }
    return results


def _interrupt(trainers: list, active: list[int], results: list, sums: StackedSums, epoch: int, step: int,
               order_states: list[torch.Tensor], base_lrs: list[float], t_start: float) -> None:
    """Every running member keeps the epoch's order and sums so far, as its own trainer would."""
    elapsed = time.perf_counter() - t_start
    for i in list(active):
        t = trainers[i]
        t.partial = sums.member(i).cut(epoch, step, order_states[i], base_lrs[i])
        t.counters.train_s += elapsed
        results[i] = Interrupted(f"epoch {epoch}, step {step}")
        active.remove(i)


def _optimizer_step(stack: Stack, trainers: list) -> None:
    """The stacked optimizer's step at every member's current LR: when the members' LRs differ, the
    step runs at LR 1 and each member's update is scaled by its own LR (the update is linear in it)."""
    rescale: list[tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = []
    for g, group in enumerate(stack.optimizer.param_groups):
        lrs = [t.optimizer.param_groups[g]["lr"] for t in trainers]
        if all(lr == lrs[0] for lr in lrs):
            group["lr"] = lrs[0]
            continue
        group["lr"] = 1.0
        old = [p.detach().clone() for p in group["params"]]
        rescale.append((group["params"], old, torch.tensor(lrs, dtype=old[0].dtype, device=old[0].device)))
    stack.optimizer.step()
    with torch.no_grad():
        for params, old, lrs in rescale:
            for p, p0 in zip(params, old, strict=True):
                scale = lrs.view(-1, *([1] * (p.dim() - 1)))
                p.copy_(p0 + (p - p0) * scale)
