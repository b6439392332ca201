"""The training runner: one loop, top to bottom, for every combination of techniques.

    build (data, model, optimizer, scheduler, policies) -> for each epoch:
        for each batch: forward -> loss (+ penalty) -> backward -> clip -> step -> schedule
        validate -> log -> schedule / early stop
    -> test once -> save model and summary

Data are in-memory tensors on the training device, batched by index, and the loop syncs with
the device only when it has to (divergence checks, progress updates), so the framework costs
little over a hand-written loop (see `make bench`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import nnopt_cli
from nnopt_cli import distributed
from nnopt_cli.activation import activation_factory
from nnopt_cli.batch_size import BatchSizePolicy
from nnopt_cli.checkpoint import config_fingerprint, load_checkpoint, make_checkpoint, restore_checkpoint
from nnopt_cli.config import validate
from nnopt_cli.data import Splits, load_dataset
from nnopt_cli.device import configure_threads, resolve_device, seed_everything
from nnopt_cli.errors import ConfigError
from nnopt_cli.init import init_weights
from nnopt_cli.interrupt import Interrupt, Interrupted
from nnopt_cli.models import build_model, count_params
from nnopt_cli.optim import build_optimizer, build_scheduler, current_lr
from nnopt_cli.progress import Progress
from nnopt_cli.regularizer import Penalty
from nnopt_cli.run_dir import RunDir

log = logging.getLogger("nnopt")


class Diverged(Exception):
    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"loss became {loss} at epoch {epoch}, step {step}")


# ---------------------------------------------------------------------------- building blocks


def make_model(cfg: dict, input_shape, num_classes: int) -> nn.Module:
    act_params = {k: v for k, v in cfg["activation"].items() if k != "name"}
    act = activation_factory(cfg["activation"]["name"], **act_params)
    model_params = {k: v for k, v in cfg["model"].items() if k != "name"}
    try:
        model = build_model(cfg["model"]["name"], input_shape, num_classes, act, **model_params)
    except (TypeError, ValueError) as e:
        raise ConfigError("model", cfg["model"], str(e)) from None
    init = cfg["init"]
    init_weights(model, init["name"], cfg["activation"]["name"],
                 negative_slope=act_params.get("negative_slope", 0.01), mode=init.get("mode", "fan_in"))
    return model


def make_batch_policy(cfg: dict) -> BatchSizePolicy:
    b, s = cfg["batch_size"], cfg["scheduler"]
    growth = None
    if b["policy"] == "double" and b.get("instead_of_lr_decay"):
        # Smith et al. 2018: grow the batch at the epochs where the step schedule would decay the LR
        growth = list(s["milestones"]) if s["name"] == "multistep" else list(
            range(s["step_size"], cfg["epochs"], s["step_size"]))
    return BatchSizePolicy(
        b["policy"], b.get("size"), epochs=cfg["epochs"], seed=cfg["seed"], start=b.get("start"),
        end=b.get("end"), every=b.get("every", 1),
        factor=(1 / s["gamma"]) if growth is not None else b.get("factor", 2.0),
        max_size=b.get("max_size"), min_size=b.get("min_size"), growth_epochs=growth,
        lr_scaling=b["lr_scaling"], base_size=b["base_size"],
    )


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             precision: str = "fp32", sharded: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in eval mode.

    sharded: under DDP each rank scores every world_size-th sample and the sums are added over
    the ranks, so every rank gets the numbers of the whole set (all ranks must call it).
    """
    n_all, world = len(x), distributed.world_size()
    if sharded and world > 1:
        x, y = x[distributed.rank()::world], y[distributed.rank()::world]
    was_training = model.training
    model.eval()
    loss_sum = x.new_zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    with autocast_context(precision, x.device):
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size]).float()
            yb = y[i:i + batch_size]
            loss_sum += F.cross_entropy(out, yb, reduction="sum").double()
            correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    if sharded and world > 1:
        loss_sum, correct = distributed.sum_over_ranks(loss_sum, correct)
    n = max(n_all, 1)
    return loss_sum.item() / n, correct.item() / n


class EarlyStopping:
    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float, restore_best: bool):
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.restore_best = min_delta, restore_best
        self.best: float | None = None
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def step(self, epoch: int, row: dict, model: nn.Module) -> bool:
        """Record this epoch; True when training should stop."""
        value = row[self.monitor]
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs, self.best_state = state["bad_epochs"], state["best_state"]


# ---------------------------------------------------------------------------- the run


@dataclass
class RunContext:
    """What the caller knows about where the run executes (Hydra job info, sweep width)."""

    run_dir: Path
    parallel_jobs: int = 1
    live_progress: bool | None = None
    resume: bool = False  # continue from run_dir/checkpoint.pt (from scratch if the run died before one)


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(nnopt_cli.__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def base_summary(cfg: dict, device: torch.device, threads: int) -> dict[str, Any]:
    return {
        "status": "running",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": threads,
        "world_size": distributed.world_size(),  # DDP processes (torchrun), 1 for a single process
        "precision": cfg["precision"],
        "versions": {"nnopt": nnopt_cli.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "git_sha": git_sha(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def load_splits(cfg: dict) -> Splits:
    d = {k: v for k, v in cfg["dataset"].items() if k != "name"}
    return load_dataset(cfg["dataset"]["name"], **d)


class Trainer:
    """Everything one optimization step needs, built from the config: model, optimizer,
    scheduler, batch-size policy, penalty, clipping, precision. `train_epoch` runs one epoch.

    Post-training stages reuse it to fine-tune a changed model with the run's own settings.
    """

    def __init__(self, cfg: dict, model: nn.Module, n_train: int, device: torch.device,
                 epochs: int | None = None, loss_fn=None):
        self.cfg, self.model, self.n_train, self.device = cfg, model, n_train, device
        self.loss_fn = loss_fn  # (out, y, x) -> mean loss in place of cross-entropy (distillation)
        self.policy = make_batch_policy(cfg if epochs is None else {**cfg, "epochs": epochs})
        self.optimizer = build_optimizer(cfg["optimizer"], model.parameters())
        sched_cfg = cfg["scheduler"]
        if cfg["batch_size"].get("instead_of_lr_decay"):
            sched_cfg = {"name": "none"}  # the batch growth replaces the LR decay
        self.scheduler, self.interval, self.monitor = build_scheduler(
            sched_cfg, self.optimizer, self.policy.total_steps(n_train))
        self.penalty = Penalty.from_config(cfg["regularizer"])
        self.penalized = Penalty.penalized(model) if self.penalty else []
        self.clip = cfg["grad_clip"]
        self.precision = cfg["precision"]
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        # on CPU a sync per step is nearly free, so divergence is caught at the very step;
        # on CUDA we check every log_every steps to keep the GPU queue full
        self.check_every = 1 if device.type == "cpu" else cfg["log_every"]
        self.log_every = cfg["log_every"]
        self.generator = torch.Generator(device=device).manual_seed(cfg["seed"])
        # under torchrun: DDP around the model, each rank trains on its share of every global batch
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.net = distributed.wrap(model, device)
        if self.world > 1:  # dropout masks: a stream per rank, or every shard would get the same ones
            torch.manual_seed(cfg["seed"] + 7919 * self.rank)
        # stop requests (Ctrl-C, SIGTERM) are honoured at step boundaries: see interrupt.py
        self.should_stop: Callable[[], bool] = lambda: False
        self.partial: dict[str, Any] | None = None  # the epoch an interrupt cut short, to finish on resume

    def state_dict(self) -> dict[str, Any]:
        """Everything here that training changes, as tensors and plain values (checkpoint.py)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "generator": self.generator.get_state(),
            "batch_size_policy": dict(vars(self.policy)),  # stateless per epoch today: its settings
            "partial_epoch": self.partial,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        vars(self.policy).update(state["batch_size_policy"])
        self.partial = state["partial_epoch"]

    def train_epoch(self, epoch: int, x_all: torch.Tensor, y_all: torch.Tensor,
                    progress: Progress | None = None) -> dict[str, Any]:
        """One pass over (x_all, y_all) in a fresh random order; returns the epoch's train metrics."""
        model, optimizer, policy, device = self.model, self.optimizer, self.policy, self.device
        n = len(x_all)
        model.train()
        sizes = policy.epoch_sizes(epoch - 1, n)
        part, self.partial = (self.partial if self.partial and self.partial["epoch"] == epoch else None), None
        if part is not None:  # finish an epoch an interrupt cut short: same order, same sums so far
            self.generator.set_state(part["generator"])
        order_state = self.generator.get_state()
        batches = distributed.epoch_batches(n, sizes, self.generator, self.rank, self.world)
        base_lr = current_lr(optimizer) if part is None else part["base_lr"]
        loss_sum = torch.zeros((), device=device)
        reg_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        grad_norms: list[torch.Tensor] = []
        if part is not None:
            loss_sum, reg_sum, correct = (part[k].to(device) for k in ("loss_sum", "reg_sum", "correct"))
            grad_norms = list(part["grad_norms"].to(device).unbind())
        if progress is not None:
            progress.start_epoch(epoch, len(sizes))
        seen = 0  # samples this rank has trained on so far this epoch
        for step, (bs, idx) in enumerate(batches, start=1):
            seen += len(idx)
            if part is not None and step <= part["step"]:
                continue  # trained before the interrupt
            if self.should_stop():
                self.partial = {"epoch": epoch, "step": step - 1, "generator": order_state, "base_lr": base_lr,
                                "loss_sum": loss_sum, "reg_sum": reg_sum, "correct": correct,
                                "grad_norms": torch.stack(grad_norms) if grad_norms else torch.zeros(0)}
                raise Interrupted(f"epoch {epoch}, step {step - 1}")
            x, y = x_all[idx], y_all[idx]
            share = bs / self.world  # this rank's part of the global batch
            with autocast_context(self.precision, device):
                out = self.net(x)
                if self.world == 1:
                    loss = F.cross_entropy(out, y) if self.loss_fn is None else self.loss_fn(out, y, x)
                else:
                    # DDP averages gradients over the ranks, so sum / (bs / world) on each rank
                    # gives exactly the gradient of the global batch mean, even for uneven shares
                    loss = (F.cross_entropy(out, y, reduction="sum") if self.loss_fn is None
                            else self.loss_fn(out, y, x) * len(y)) / share  # loss_fn: a batch mean
            total = loss
            if self.penalty is not None:
                reg = self.penalty(self.penalized)
                total = loss + reg
                reg_sum.add_(reg.detach(), alpha=share)
            optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(total).backward()
                self.scaler.unscale_(optimizer)  # clip and measure the true gradients
            else:
                total.backward()
            # the gradient norm is sampled every log_every steps: measuring it each step costs time
            measure = (step - 1) % self.log_every == 0
            if self.clip["mode"] == "norm":
                norm = nn.utils.clip_grad_norm_(model.parameters(), self.clip["max_norm"], self.clip["norm_type"])
                if measure:
                    grad_norms.append(norm.detach())
            else:
                if measure:
                    grad_norms.append(nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
                if self.clip["mode"] == "value":
                    nn.utils.clip_grad_value_(model.parameters(), self.clip["clip_value"])
            factor = policy.lr_factor(bs)
            if factor != 1.0:  # scale for this step only, so the scheduler's own state is untouched
                for g in optimizer.param_groups:
                    g["lr"] = g["lr"] * factor
            if self.scaler is not None:
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                optimizer.step()
            if factor != 1.0:
                for g in optimizer.param_groups:
                    g["lr"] = g["lr"] / factor
            if self.scheduler is not None and self.interval == "step":
                self.scheduler.step()
            loss_sum.add_(loss.detach().float(), alpha=share)  # in place, no host sync
            correct.add_((out.argmax(1) == y).sum())
            if step % self.check_every == 0 or step == len(sizes):
                # under DDP all ranks must agree to stop, so they check the loss summed over ranks
                value = (loss if self.world == 1 else distributed.sum_over_ranks(loss)[0] / self.world).item()
                if not math.isfinite(value):
                    raise Diverged(epoch, step, value)
            if progress is not None and progress.live and step % self.log_every == 0:
                progress.update(step, loss_sum.item() / seen, correct.item() / seen, current_lr(optimizer))
        if self.world > 1:  # the epoch's metrics count every rank's samples
            loss_sum, reg_sum, correct = distributed.sum_over_ranks(loss_sum, reg_sum, correct)
        row = {
            "train/loss": loss_sum.item() / n,
            "train/acc": correct.item() / n,
            "lr": base_lr,
            # the random policy has no single size: report the mean size of the epoch
            "batch_size": sizes[0] if policy.policy != "random" else round(n / len(sizes), 1),
            "steps": len(sizes),
            "grad_norm": torch.stack(grad_norms).mean().item() if grad_norms else None,
        }
        if self.penalty is not None:
            row["train/penalty"] = reg_sum.item() / n
        return row

    def end_epoch(self, row: dict) -> None:
        """Advance epoch-level schedules (plateau schedulers read the monitored metric)."""
        if self.scheduler is not None and self.interval == "epoch":
            if self.monitor is not None:
                self.scheduler.step(row[self.monitor])
            else:
                self.scheduler.step()


def stop_agreed(interrupt: Interrupt, device: torch.device) -> bool:
    """Whether to stop at this epoch boundary; under DDP, when any rank was asked to."""
    if distributed.world_size() == 1:
        return interrupt.requested
    flag = torch.tensor(float(interrupt.requested), device=device)
    return distributed.sum_over_ranks(flag)[0].item() > 0


def train(cfg: dict, ctx: RunContext) -> dict[str, Any]:
    """Run one experiment described by a resolved config dict; return the summary it wrote."""
    validate(cfg)
    device = distributed.device_for(resolve_device(cfg["device"]))
    if cfg["precision"] == "fp16" and device.type != "cuda":
        raise ConfigError("precision", "fp16", f"fp16 needs a CUDA device (device is {device}); use fp32 or bf16")
    threads = configure_threads(cfg["threads"], ctx.parallel_jobs)
    seed_everything(cfg["seed"], cfg["deterministic"])

    run = distributed.rank0_writes(RunDir(ctx.run_dir))  # under DDP only rank 0 writes the folder
    summary = base_summary(cfg, device, threads)
    summary["config_sha"] = config_fingerprint(cfg)  # what a sweep's skip_completed compares
    run.write_summary(summary)

    data = load_splits(cfg).to(device)
    model = make_model(cfg, data.input_shape, data.num_classes).to(device)
    summary["params"] = count_params(model)
    trainer = Trainer(cfg, model, len(data.train_x), device)
    es = cfg["early_stopping"]
    stopper = EarlyStopping(es["monitor"], es["mode"], es["patience"], es["min_delta"],
                            es["restore_best"]) if es["enabled"] else None

    log.info("run dir %s | device %s | threads %d | params %d", run.path, device, threads, summary["params"])
    train_time, epochs_run, stop_reason = 0.0, 0, "max_epochs"
    best_val_acc, best_val_epoch = -1.0, 0
    rows: list[dict] = []  # the metrics so far; the checkpoint carries them, so resuming repeats none
    elapsed = 0.0  # seconds already spent in an epoch that an interrupt cut short
    if ctx.resume and run.checkpoint_path.exists():
        ckpt = load_checkpoint(run.checkpoint_path)
        p = restore_checkpoint(ckpt, cfg, model, trainer, stopper, run.checkpoint_path)
        epochs_run, train_time, stop_reason = p["epoch"], p["train_time_s"], p["stop_reason"]
        best_val_acc, best_val_epoch, elapsed = p["best_val_acc"], p["best_val_epoch"], p["epoch_elapsed_s"]
        rows = list(ckpt["metrics"])
    if ctx.resume:
        summary["resumed_from_epoch"] = epochs_run
        log.info("resuming after epoch %d%s", epochs_run, " (mid-epoch)" if trainer.partial else "")
    run.write_metrics(rows)  # drops rows a killed run wrote after its last checkpoint: they are redone

    def checkpoint(epoch_elapsed: float = 0.0) -> None:
        run.save_checkpoint(make_checkpoint(cfg, model, trainer, stopper, device, metrics=rows, progress={
            "epoch": epochs_run, "best_val_acc": best_val_acc, "best_val_epoch": best_val_epoch,
            "train_time_s": train_time, "stop_reason": stop_reason, "epoch_elapsed_s": epoch_elapsed}))

    every = cfg["checkpoint"]["every"]
    last_epoch = cfg["epochs"] if stop_reason == "max_epochs" else epochs_run  # early stopping ended it
    interrupt = Interrupt().install()
    if trainer.world == 1:  # under DDP the ranks must agree, so they stop at epoch boundaries only
        trainer.should_stop = lambda: interrupt.requested
    try:
        with Progress(cfg["epochs"], live=ctx.live_progress) as progress:
            for epoch in range(epochs_run + 1, last_epoch + 1):
                t0, elapsed = time.perf_counter() - elapsed, 0.0
                if stop_agreed(interrupt, device):
                    raise Interrupted(f"the end of epoch {epoch - 1}")
                row = {"epoch": epoch, **trainer.train_epoch(epoch, data.train_x, data.train_y, progress)}
                row["val/loss"], row["val/acc"] = evaluate(model, data.val_x, data.val_y,
                                                           cfg["eval_batch_size"], cfg["precision"], sharded=True)
                if not math.isfinite(row["val/loss"]):
                    raise Diverged(epoch, row["steps"], row["val/loss"])
                row["time_s"] = time.perf_counter() - t0  # evaluate() synced with the device
                train_time += row["time_s"]
                epochs_run = epoch
                run.append_metrics(row)
                rows.append(row)
                progress.end_epoch(row)
                if row["val/acc"] > best_val_acc:
                    best_val_acc, best_val_epoch = row["val/acc"], epoch
                trainer.end_epoch(row)
                if stopper is not None and stopper.step(epoch, row, model):
                    stop_reason = "early_stopping"
                    log.info("early stopping: %s did not improve for %d epochs (best %.4g at epoch %d)",
                             stopper.monitor, stopper.patience, stopper.best, stopper.best_epoch)
                if every and (epoch % every == 0 or epoch == last_epoch or stop_reason != "max_epochs"):
                    checkpoint()
                if stop_reason != "max_epochs":
                    break
    except Diverged as d:
        summary.update(status="diverged", epochs=epochs_run, train_time_s=train_time,
                       diverged_at={"epoch": d.epoch, "step": d.step}, **{"test/loss": None, "test/acc": None},
                       message=f"training diverged: {d}; metrics of the {epochs_run} finished epoch(s) are kept")
        run.write_summary(summary)
        log.error("%s (status: diverged)", summary["message"])
        return summary
    except Interrupted as i:
        # a second signal here exits at once (the handlers stay until `finally`): files are atomic
        checkpoint(time.perf_counter() - t0 if trainer.partial is not None else 0.0)
        summary.update(status="interrupted", signal=interrupt.name, exit_code=interrupt.exit_code,
                       epochs=epochs_run, train_time_s=train_time, **{"test/loss": None, "test/acc": None},
                       message=f"interrupted by {interrupt.name} at {i}; checkpoint saved, continue with: "
                               f"nnopt train resume={run.path}")
        run.write_summary(summary)
        log.warning("%s", summary["message"])
        return summary
    finally:
        interrupt.restore()
        trainer.should_stop = lambda: False

    if stopper is not None and stopper.restore_best and stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
        summary["restored_epoch"] = stopper.best_epoch
    test_loss, test_acc = evaluate(model, data.test_x, data.test_y, cfg["eval_batch_size"], cfg["precision"],
                                   sharded=True)
    run.save_model(model)
    from nnopt_cli.post import stage_names  # post-training code loads only when a run reaches here

    stages = stage_names(cfg)
    summary.update({
        # a run is completed only once its post-training stages are: a kill during them must not
        # leave a folder that resume / skip_completed take for finished
        "status": "post_training" if stages else "completed",
        "test/loss": test_loss,
        "test/acc": test_acc,
        "best/val/acc": best_val_acc,
        "best/val/epoch": best_val_epoch,
        "epochs": epochs_run,
        "stop_reason": stop_reason,
        "train_time_s": train_time,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    run.write_summary(summary)
    log.info("test/acc=%.4f test/loss=%.4f (%d epochs, %.1fs) -> %s", test_acc, test_loss, epochs_run,
             train_time, run.path)
    if stages:  # post-training stages (nnopt_cli/post), on the saved model
        from nnopt_cli.post import run_stages

        # under DDP the stages are single-process work on the trained model: the process group
        # ends here, the other ranks finish, and rank 0 runs them with plain (non-DDP) training
        if not distributed.leave_to_rank0():
            return summary
        run_stages(cfg, model, data, run, summary, device)
        summary["status"] = "completed"
        run.write_summary(summary)
    return summary
