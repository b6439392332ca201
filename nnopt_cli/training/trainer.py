"""The training step and epoch: what one optimization step does, for every combination of techniques.

    for each batch:  forward -> loss (+ penalty) -> backward -> clip -> step -> schedule -> accumulate -> check

`_step` reads in that order. Every optional mode is an object that does nothing when it is off, so the
step has one code path: AMP loss scaling (precision.LossScaler, like GradScaler(enabled=False)), the
penalty (regularizer.Penalty.add_to), clipping and the sampled gradient norm (clip.GradClip),
batch-size LR scaling (BatchSizePolicy.scaled_lr), DDP loss scaling (_batch_loss), stale gradients
(StaleGradients, async_sgd=stale: off at staleness 0) and observers (with none, the base Observer,
whose hooks do nothing). The resume of an epoch an interrupt cut short is
EpochSums.resumed.

Gradient accumulation (batch_size.accumulate=k): a step's batch is split into k micro-batches (the
policy's size each: the big batch's own slices, from the same permutation); the closure runs forward
and backward on each in turn, every micro-batch's loss weighted by its share of the step's samples
(1/k when they are equal), so the summed gradient is the big batch's; the penalty joins once, then
clipping and one optimizer step. A closure optimizer (L-BFGS, SAM's second pass) gets the whole
step's gradient at every call. Everything counted in steps (scheduler, counters, log_every,
eval_every_steps, gradient-norm samples) counts optimizer steps. With k = 1 the step is the plain one.

The optimizer's protocol decides how the step gets its gradients, in one place for all of nnopt:
optim.optimizers.optimizer_step. forward -> loss -> backward -> clip is the closure it is given; it
calls the closure once (plain, create_graph), hands it to the optimizer (closure: L-BFGS calls it for
every gradient it needs), or both (backward_closure: SAM's second pass). Every call counts a forward
and a backward pass; the epoch's loss and accuracy are those of the first call, at the weights the
step started from.

Evaluation weights: train_epoch ends with the weights to evaluate in the model: schedule-free's average x
(optimizer.eval(), BatchNorm statistics recomputed) and/or the EMA/SWA average (averaging.py; the raw
weights kept aside in `raw`). The next train_epoch puts the training weights back first. So the runner's
evaluate(model), checkpoint, early-stopping snapshot, test and model.pt all see the evaluation weights,
and a checkpoint resumes bit for bit.

Data are in-memory tensors on the training device, batched by index, and the loop syncs with the device
only when it has to (divergence checks, progress updates), so the framework costs little over a
hand-written loop (see `make bench`). The epochs themselves are fit.py's, for the runner, the
post-training fine-tunes and lr-find alike.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from nnopt_cli import data
from nnopt_cli.optim.averaging import Averager
from nnopt_cli.optim.batch_size import BatchSizePolicy
from nnopt_cli.optim.optimizers import Protocol, build_optimizer, current_lr, optimizer_step
from nnopt_cli.optim.schedulers import build_scheduler
from nnopt_cli.optim.staleness import StaleGradients
from nnopt_cli.training import distributed
from nnopt_cli.training.clip import GradClip
from nnopt_cli.training.interrupt import Interrupted
from nnopt_cli.training.loss import make_loss
from nnopt_cli.training.metrics import Counters, Diverged, EpochSums
from nnopt_cli.training.observers import Observer, Observers, StepInfo
from nnopt_cli.training.precision import LossScaler, autocast_context
from nnopt_cli.training.progress import Progress
from nnopt_cli.training.regularizer import Penalty
from nnopt_cli.training.sampler import BalancedSampler
from nnopt_cli.training.weights import EvalWeights


class Step(NamedTuple):
    """What a step's first forward/backward saw (at the weights the step started from)."""

    out: torch.Tensor  # the logits
    loss: torch.Tensor  # the batch loss, without the penalty
    penalty: torch.Tensor | None  # None without a regularizer
    grad_norm: torch.Tensor | None  # the gradient's global norm before clipping, when sampled
    info: StepInfo  # what the observers were given


class Trainer:
    """Everything one optimization step needs, built from the config: model, optimizer,
    scheduler, batch-size policy, penalty, clipping, precision. `train_epoch` runs one epoch."""

    def __init__(self, cfg: dict, model: nn.Module, n_train: int, device: torch.device,
                 epochs: int | None = None, loss_fn=None, observers: Observers | None = None,
                 class_counts: torch.Tensor | None = None):
        """class_counts: the training samples per class (loss.class_weights=balanced needs them)."""
        self.cfg, self.model, self.n_train, self.device = cfg, model, n_train, device
        # conf/loss: (logits, labels) -> batch mean
        self.criterion = make_loss(cfg.get("loss"), None if class_counts is None else class_counts.to(device),
                                   data.task(cfg.get("dataset") or {}))
        self.balanced = cfg["batch_size"].get("sampler", "random") == "balanced"
        self.sampler: BalancedSampler | None = None  # made from the first epoch's labels
        self.loss_fn = loss_fn  # (out, y, x) -> batch mean in place of the criterion (distillation)
        # batch norm cannot train on a one-sample batch: the policy folds such a last batch into the one before
        min_batch = 2 * distributed.world_size() if cfg["model"].get("batch_norm") else 1
        n_epochs = cfg["epochs"] if epochs is None else epochs
        self.policy = BatchSizePolicy.from_config(cfg["batch_size"], cfg["scheduler"], n_epochs, cfg["seed"],
                                                  min_batch=min_batch)
        self.accumulate = self.policy.accumulate  # micro-batches per optimizer step
        self.min_micro = 2 if cfg["model"].get("batch_norm") else 1  # samples per micro-batch on a rank
        self.optimizer = build_optimizer(cfg["optimizer"], model)
        self.protocol = Protocol.from_config(cfg["optimizer"])
        # the batch growth replaces the LR decay
        sched_cfg = {"name": "none"} if cfg["batch_size"].get("instead_of_lr_decay") else cfg["scheduler"]
        total_steps = self.policy.total_steps(n_train)
        self.scheduler, self.interval, self.monitor = build_scheduler(sched_cfg, self.optimizer, total_steps)
        # weight averaging belongs to the run: post-training fine-tunes (epochs given) train raw weights
        self.averager = Averager.from_config(cfg.get("averaging"), model, total_steps) if epochs is None else None
        self.swa_scheduler = self.averager.swa_scheduler(self.optimizer) if self.averager else None
        self.weights = EvalWeights(model, self.optimizer, self.protocol, self.averager)
        self.epoch = 0  # the epoch being trained (SWALR takes over the LR from averaging.start_epoch)
        self.penalty = Penalty.from_config(cfg["regularizer"]) or Penalty()  # Penalty(): adds nothing
        self.penalized = Penalty.penalized(model) if self.penalty.enabled else []
        self.clip = GradClip.from_config(cfg["grad_clip"], model)
        self.precision = cfg["precision"]
        self.autocast = autocast_context(self.precision, device)  # fp32: a nullcontext (reusable)
        self.scaler = LossScaler(self.precision)
        # async_sgd=stale belongs to the run, like averaging (post-training fine-tunes train in sync);
        # otherwise it does nothing
        self.delay = StaleGradients.from_config(cfg.get("async_sgd") if epochs is None else None)
        # a sync per step is nearly free on CPU (divergence caught at its step); on CUDA it would drain the queue
        self.check_every = 1 if device.type == "cpu" else cfg["log_every"]
        self.log_every = cfg["log_every"]
        self.generator = torch.Generator(device=device).manual_seed(cfg["seed"])
        # under torchrun: DDP around the model, each rank trains on its share of every global batch
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.net = distributed.wrap(model, device)
        if self.world > 1:  # dropout masks: a stream per rank, or every shard would get the same ones
            torch.manual_seed(cfg["seed"] + 7919 * self.rank)
        self.observers = observers if observers is not None else Observers()
        self.watching: Observer = self.observers  # what each step calls: see train_epoch
        self.counters = Counters()
        # evaluation every N optimizer steps (eval_every_steps): the runner's callback, timed apart
        self.eval_every: int | None = None
        self.on_eval: Callable[[float], None] | None = None  # receives the training seconds so far
        # stop requests (Ctrl-C, SIGTERM) are honoured at step boundaries: see interrupt.py
        self.should_stop: Callable[[], bool] = lambda: False
        self.partial: dict[str, Any] | None = None  # the epoch an interrupt cut short, to finish on resume

    # ------------------------------------------------------------------ checkpointed state

    def state_dict(self) -> dict[str, Any]:
        """Everything here that training changes, as tensors and plain values (checkpoint.py)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "batch_size_policy": dict(vars(self.policy)),  # stateless per epoch today: its settings
            "partial_epoch": self.partial,
            "counters": self.counters.as_row(),
            "observers": self.observers.state_dict(),
            "averaging": self.averager.state_dict() if self.averager is not None else None,
            "swa_scheduler": self.swa_scheduler.state_dict() if self.swa_scheduler is not None else None,
            "raw_weights": self.weights.raw,
            "stale_gradients": self.delay.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        vars(self.policy).update(state["batch_size_policy"])
        self.partial = state["partial_epoch"]
        self.counters = Counters(**state["counters"])  # older formats: store/checkpoint.py upgrade()
        self.observers.load_state_dict(state["observers"])
        if self.averager is not None:
            self.averager.load_state_dict(state["averaging"])
        if self.swa_scheduler is not None:
            self.swa_scheduler.load_state_dict(state["swa_scheduler"])
        self.weights.raw = state["raw_weights"]
        self.delay.load_state_dict(state.get("stale_gradients"))  # absent before async_sgd existed

    def start(self) -> None:
        """Start what the epochs need beyond this process (hogwild's workers); nothing here."""

    def close(self) -> None:
        """Release what start() started; nothing here."""

    # ------------------------------------------------------------------ the step's helpers

    def _batch_loss(self, out: torch.Tensor, y: torch.Tensor, x: torch.Tensor, share: float) -> torch.Tensor:
        mean = self.criterion(out, y) if self.loss_fn is None else self.loss_fn(out, y, x)
        if self.world == 1:
            return mean
        # DDP averages gradients over the ranks, so sum / (bs / world) on each rank gives exactly
        # the gradient of the global batch mean, even for uneven shares
        return mean * len(y) / share

    def _schedule_step(self) -> None:
        """A per-step scheduler's step (train_epoch calls it only when there is one), unless SWALR drives the LR."""
        if not self._swa_lr():
            self.scheduler.step()

    def _swa_lr(self) -> bool:
        """Whether SWALR drives the LR now (averaging=swa with swa_lr, from its start epoch on)."""
        return self.averager is not None and self.averager.schedule_taken_over(self.epoch)

    def _step(self, x: torch.Tensor, y: torch.Tensor, share: float, bs: int, measure: bool,
              epoch: int) -> Step:
        """One optimizer step: forward -> loss (+ penalty) -> backward (+ unscale) -> clip is the closure,
        optimizer_step calls it (once or more) and steps the way the optimizer's protocol says. The first
        call keeps what it saw for the epoch's sums and calls the observers' before_step (gradients
        ready, weights not yet changed). fp16 is refused for every protocol that passes a closure."""
        if self.accumulate > 1:
            return self._accumulated_step(x, y, share, bs, measure, epoch)
        first: Step | None = None

        def closure(create_graph: bool = False) -> torch.Tensor:
            nonlocal first
            with self.autocast:
                out = self.net(x)
                loss = self._batch_loss(out, y, x, share)
            total, penalty = self.penalty.add_to(loss, self.penalized)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.backward(total, self.optimizer, create_graph)
            norm = self.clip(self.model, measure and first is None)  # the norm of the step's first gradient
            self.counters.forward_passes += 1
            self.counters.backward_passes += 1
            if first is None:
                info = StepInfo(epoch, self.counters.total_steps + 1, self.model, self.optimizer, loss, bs)
                first = Step(out, loss, penalty, norm, info)
                self.watching.before_step(info)
            return total

        with self.policy.scaled_lr(self.optimizer, bs):
            optimizer_step(self.optimizer, self.protocol.step, closure, self.scaler, self.delay)
        return first

    def _accumulated_step(self, x: torch.Tensor, y: torch.Tensor, share: float, bs: int, measure: bool,
                          epoch: int) -> Step:
        """_step over `accumulate` micro-batches of (x, y): their gradients summed, then one step."""
        first: Step | None = None
        # near-equal slices, none smaller than batch norm can train on (a short last step has fewer)
        parts = min(self.accumulate, max(1, len(y) // self.min_micro))
        micro = list(zip(x.tensor_split(parts), y.tensor_split(parts), strict=True))

        def closure(create_graph: bool = False) -> torch.Tensor:
            nonlocal first
            self.optimizer.zero_grad(set_to_none=True)
            outs, losses = [], []
            for j, (xj, yj) in enumerate(micro):
                last = j == len(micro) - 1
                # under DDP the gradients are averaged over the ranks once, at the last micro-batch
                with self.net.no_sync() if self.world > 1 and not last else contextlib.nullcontext():
                    with self.autocast:
                        out = self.net(xj)
                        mean = self.criterion(out, yj) if self.loss_fn is None else self.loss_fn(out, yj, xj)
                        part = mean * (len(yj) / share)  # this micro-batch's share of the step's loss
                    total, penalty = self.penalty.add_to(part, self.penalized) if last else (part, None)
                    self.scaler.backward(total, self.optimizer, create_graph, unscale=last)
                outs.append(out.detach())
                losses.append(part.detach())
            norm = self.clip(self.model, measure and first is None)
            self.counters.forward_passes += 1  # passes over the step's batch, in micro-batches
            self.counters.backward_passes += 1
            loss = torch.stack(losses).sum()
            if first is None:
                info = StepInfo(epoch, self.counters.total_steps + 1, self.model, self.optimizer, loss, bs)
                first = Step(torch.cat(outs), loss, penalty, norm, info)
                self.watching.before_step(info)
            return loss if penalty is None else loss + penalty.detach()

        with self.policy.scaled_lr(self.optimizer, bs):
            optimizer_step(self.optimizer, self.protocol.step, closure, self.scaler)
        return first

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int, last: int) -> None:
        if step % self.check_every == 0 or step == last:
            # under DDP all ranks must agree to stop, so they check the loss summed over ranks
            value = (loss if self.world == 1 else distributed.sum_over_ranks(loss)[0] / self.world).item()
            if not math.isfinite(value):
                raise Diverged(epoch, step, value)

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch: int, x_all: torch.Tensor, y_all: torch.Tensor,
                    progress: Progress | None = None) -> dict[str, Any]:
        """One pass over (x_all, y_all) in a fresh random order; returns the epoch's train metrics."""
        t_start, eval_s = time.perf_counter(), 0.0
        model, optimizer, n = self.model, self.optimizer, len(x_all)
        # with no observer the steps call the base Observer, whose hooks do nothing: no loop, no Observers call
        self.watching = self.observers or Observer()
        self.epoch = epoch
        self.weights.to_training()
        model.train()
        sizes = self.policy.epoch_sizes(epoch - 1, n)
        micro_size = max(1, sizes[0] // self.accumulate)  # what the model sees at once: BN recompute batches
        part = self.partial if self.partial and self.partial["epoch"] == epoch else None
        self.partial = None
        if part is not None:  # finish an epoch an interrupt cut short: same order, same sums so far
            self.generator.set_state(part["generator"])
        order_state = self.generator.get_state()
        drawn = self._draw(y_all)  # balanced sampler: the samples this epoch visits (else every one once)
        batches = distributed.epoch_batches(n, sizes, self.generator, self.rank, self.world)
        base_lr = current_lr(optimizer) if part is None else part["base_lr"]
        classes = not y_all.is_floating_point()  # regression: no accuracy
        sums = EpochSums(self.device, classes) if part is None else EpochSums.resumed(part, self.device, classes)
        if progress is not None:
            progress.start_epoch(epoch, len(sizes))
        seen = 0  # samples this rank has trained on so far this epoch
        step_schedule = self.scheduler is not None and self.interval == "step"
        for step, (bs, idx) in enumerate(batches, start=1):
            seen += idx.shape[0]
            if part is not None and step <= part["step"]:
                continue  # trained before the interrupt
            if self.should_stop():
                self.partial = sums.cut(epoch, step - 1, order_state, base_lr)
                self.counters.train_s += time.perf_counter() - t_start - eval_s
                raise Interrupted(f"epoch {epoch}, step {step - 1}")
            if drawn is not None:
                idx = drawn[idx]
            x, y = x_all[idx], y_all[idx]
            share = bs / self.world  # this rank's part of the global batch
            measure = (step - 1) % self.log_every == 0  # the gradient norm is sampled: it costs time
            # step -> schedule -> accumulate -> check
            done = self._step(x, y, share, bs, measure, epoch)
            if step_schedule:
                self._schedule_step()
            c = self.counters
            c.total_steps += 1
            c.samples_seen += bs
            if self.averager is not None:
                self.averager.after_step(model, c.total_steps)
            # kept, summed later: no tensor operation, no host sync
            sums.add_step(done.out, y, done.loss, share, done.penalty, done.grad_norm)
            self._check_finite(done.loss, epoch, step, len(sizes))
            self.watching.after_step(done.info)
            if self.on_eval is not None:
                eval_s += self._maybe_evaluate_at(t_start, eval_s, x_all, micro_size)
            if progress is not None and progress.live and step % self.log_every == 0:
                progress.update(step, sums.loss_sum().item() / seen,
                                sums.correct().item() / seen if classes else None, current_lr(optimizer))
        if self.averager is not None:
            self.averager.end_epoch(model, epoch)  # SWA: the end-of-epoch weights join the average
        self.weights.to_evaluation(x_all, micro_size)
        self.counters.train_s += time.perf_counter() - t_start - eval_s
        loss_sum, penalty, correct = sums.loss_sum(), sums.penalty, sums.correct()
        if self.world > 1:  # the epoch's metrics count every rank's samples
            loss_sum, penalty, correct = distributed.sum_over_ranks(loss_sum, penalty, correct)
        row = {
            "train/loss": loss_sum.item() / n,
            **({"train/acc": correct.item() / n} if classes else {}),
            "lr": self.policy.epoch_lr(base_lr, sizes),
            # the random policy has no single size: report the mean size of the epoch
            "batch_size": sizes[0] if self.policy.policy != "random" else round(n / len(sizes), 1),
            "steps": len(sizes),
            "grad_norm": torch.stack(sums.grad_norms).mean().item() if sums.grad_norms else None,
        }
        if self.penalty.enabled:
            row["train/penalty"] = penalty.item() / n
        return row

    def _draw(self, y_all: torch.Tensor) -> torch.Tensor | None:
        if not self.balanced:
            return None
        if self.sampler is None:
            self.sampler = BalancedSampler(y_all)
        return self.sampler.draw(self.generator)

    def _maybe_evaluate_at(self, t_start: float, eval_s: float, x_all: torch.Tensor, batch_size: int) -> float:
        """The step-interval evaluation sees train_s up to this step (evaluations excluded), and the
        evaluation weights (schedule-free's x, the average), like the epoch-end one."""
        if self.eval_every is None or self.counters.total_steps % self.eval_every:
            return 0.0
        elapsed = self.counters.train_s + (time.perf_counter() - t_start - eval_s)
        t0 = time.perf_counter()
        self.weights.to_evaluation(x_all, batch_size)
        self.on_eval(elapsed)
        self.weights.to_training()
        self.model.train()
        return time.perf_counter() - t0

    def end_epoch(self, row: dict) -> None:
        """Advance epoch-level schedules (plateau schedulers read the monitored metric)."""
        if self._swa_lr():
            self.swa_scheduler.step()
        elif self.scheduler is not None and self.interval == "epoch":
            if self.monitor is not None:
                self.scheduler.step(row[self.monitor])
            else:
                self.scheduler.step()
