"""The recipe of one run, top to bottom:

    check config -> build (data, model, trainer, observers) -> restore a checkpoint (resume)
    -> for each epoch (fit.py): train (trainer.py) -> validate -> log -> schedule -> checkpoint / early stop
    -> test once -> save model and summary -> post-training stages (post/)

The epochs are fit.py's, the step trainer.py's; every config group is built by its own module (models,
optim, batch_size, clip, ...); observers (observers.py) watch without changing anything.
"""

from __future__ import annotations

import copy
import functools
import logging
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import nnopt_cli
from nnopt_cli.data import REGRESSION, load_splits
from nnopt_cli.models import count_params, make_model
from nnopt_cli.models.flops import forward_flops
from nnopt_cli.post import run_stages, stage_names
from nnopt_cli.run.continuation import Continuation
from nnopt_cli.run.transfer import freeze, load_into
from nnopt_cli.run.validate import validate
from nnopt_cli.store import layout
from nnopt_cli.store.checkpoint import (
    FORMAT,
    RowsText,
    config_fingerprint,
    load_checkpoint,
    make_checkpoint,
    restore_checkpoint,
)
from nnopt_cli.store.folder import RunDir
from nnopt_cli.store.lock import RunLock
from nnopt_cli.training import distributed, lockstep
from nnopt_cli.training.checks import check_precision
from nnopt_cli.training.device import configure_threads, resolve_device, seed_everything
from nnopt_cli.training.early_stopping import EarlyStopping
from nnopt_cli.training.fit import FitHooks, fit
from nnopt_cli.training.hogwild import HogwildTrainer, async_summary, is_hogwild
from nnopt_cli.training.interrupt import Interrupt, Interrupted
from nnopt_cli.training.metrics import Diverged, evaluate_split
from nnopt_cli.training.observers import EpochInfo, RunInfo, StopRun, build_observers
from nnopt_cli.training.progress import Progress
from nnopt_cli.training.trainer import Trainer

log = logging.getLogger("nnopt")

# what evals.jsonl records of each evaluation: classification's loss and acc, regression's loss and rmse
EVAL_KEYS = ("loss", "acc", "rmse")



@dataclass
class RunContext:
    """What the caller knows about where the run executes (Hydra job info, sweep width)."""

    run_dir: Path
    parallel_jobs: int = 1
    live_progress: bool | None = None
    resume: bool = False  # continue from run_dir/checkpoint.pt (from scratch if the run died before one)
    progress_prefix: str = ""  # before each progress line: a sweep job's [job k/N overrides]
    checked: bool = False  # the caller ran validate() on this config (nnopt train does, before the folder)


@dataclass
class LoopState:
    """The epoch loop's own counters: checkpointed as the checkpoint's `progress` entry."""

    epoch: int = 0  # epochs finished
    train_time_s: float = 0.0
    stop_reason: str = "max_epochs"
    best_val_acc: float = -1.0
    best_val_loss: float = float("inf")  # regression's best: the lowest val/loss (the MSE)
    best_val_epoch: int = 0
    epoch_elapsed_s: float = 0.0  # seconds already spent in an epoch an interrupt cut short
    rows: list[dict] = field(default_factory=list)  # metrics so far: resuming repeats none
    rows_text: RowsText = field(default_factory=RowsText)  # the rows' JSON for checkpoints, each encoded once

    def progress(self, epoch_elapsed: float = 0.0) -> dict[str, Any]:
        return {"epoch": self.epoch, "best_val_acc": self.best_val_acc, "best_val_epoch": self.best_val_epoch,
                "best_val_loss": self.best_val_loss,
                "train_time_s": self.train_time_s, "stop_reason": self.stop_reason,
                "epoch_elapsed_s": epoch_elapsed}

    @classmethod
    def from_checkpoint(cls, ckpt: dict, progress: dict) -> LoopState:
        return cls(epoch=progress["epoch"], train_time_s=progress["train_time_s"],
                   stop_reason=progress["stop_reason"], best_val_acc=progress["best_val_acc"],
                   best_val_epoch=progress["best_val_epoch"], epoch_elapsed_s=progress["epoch_elapsed_s"],
                   best_val_loss=progress.get("best_val_loss", float("inf")),
                   rows=list(ckpt["metrics"]))


@functools.cache  # a process runs the code it imported: asked once, not for every job of a sweep (~6 ms each)
def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(nnopt_cli.__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def base_summary(cfg: dict, device: torch.device, threads: int) -> dict[str, Any]:
    return {
        "status": layout.Status.RUNNING,
        "format": FORMAT,  # of this folder's files (store/checkpoint.py upgrade)
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": threads,
        "world_size": distributed.world_size(),  # DDP processes (torchrun), 1 for a single process
        "precision": cfg["precision"],
        "versions": {"nnopt": nnopt_cli.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "git_sha": git_sha(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config_sha": config_fingerprint(cfg),  # what a sweep's skip_completed compares
        **{k: cfg[k] for k in layout.LABEL_KEYS if cfg.get(k)},  # name=, tags=: what `nnopt ls` shows
    }


def stop_agreed(interrupt: Interrupt, device: torch.device) -> bool:
    """Whether to stop at this epoch boundary; under DDP, when any rank was asked to."""
    if distributed.world_size() == 1:
        return interrupt.requested
    flag = torch.tensor(float(interrupt.requested), device=device)
    return distributed.sum_over_ranks(flag)[0].item() > 0


def _restore(run: RunDir, cfg: dict, model, trainer: Trainer, stopper, parent: Continuation | None = None) -> LoopState:
    """From the run's own checkpoint, or (continue_from) from its parent's final one; either is
    upgraded to today's format when read."""
    if parent is not None:
        ckpt, progress = parent.restore(cfg, model, trainer, stopper)
    else:
        ckpt = load_checkpoint(run.checkpoint_path, train_samples=trainer.n_train)
        progress = restore_checkpoint(ckpt, cfg, model, trainer, stopper, run.checkpoint_path)
    return LoopState.from_checkpoint(ckpt, progress)


def _eval_logger(run: RunDir, cfg: dict, model, data, trainer: Trainer, epoch_of: list[int]):
    """eval_every_steps: evaluate on the validation split every N optimizer steps into evals.jsonl."""
    path = run.path / layout.EVALS

    def on_eval(train_s: float) -> None:
        got = evaluate_split(model, data.val_x, data.val_y, cfg["eval_batch_size"], cfg["precision"], sharded=True)
        row = {"epoch": epoch_of[0], **trainer.counters.as_row(), "train_s": train_s,
               **{f"val/{k}": got[k] for k in EVAL_KEYS if k in got}}
        run.append_jsonl(path, row)
    return on_eval


def train(cfg: dict, ctx: RunContext) -> dict[str, Any]:
    """Run one experiment described by a resolved config dict; return the summary it wrote.

    The run folder is locked for the whole run (re-entrant: `nnopt train` holds it already), so a
    second writer of the same folder is refused; under DDP rank 0 holds it for all ranks."""
    if not distributed.is_rank0():
        return _train(cfg, ctx)
    Path(ctx.run_dir).mkdir(parents=True, exist_ok=True)
    with RunLock(ctx.run_dir):
        return _train(cfg, ctx)


def _train(cfg: dict, ctx: RunContext) -> dict[str, Any]:
    if not ctx.checked:  # checked twice, it would build a trial optimizer and model twice
        validate(cfg)
    device = distributed.device_for(resolve_device(cfg["device"]))
    check_precision(cfg["precision"], device)
    threads = configure_threads(cfg["threads"], ctx.parallel_jobs)
    seed_everything(cfg["seed"], cfg["deterministic"])

    run = distributed.rank0_writes(RunDir(ctx.run_dir))  # under DDP only rank 0 writes the folder
    parent = Continuation.of(cfg, run.path, ctx.resume)  # continue_from: a finished run goes on
    summary = {**base_summary(cfg, device, threads), **async_summary(cfg)}  # async_sgd: reproducible or not
    if parent is not None:
        summary["continued_from"] = parent.record
    run.write_summary(summary)

    observers = build_observers(cfg)
    data = load_splits(cfg["dataset"]).to(device)
    model = make_model(cfg, data.input_shape, data.num_classes).to(device)
    summary["params"] = count_params(model)
    # what rebuilds the model from the folder alone (nnopt_cli.load_run), own datasets included
    regression = data.task == REGRESSION
    summary["data"] = {"input_shape": list(data.input_shape), "num_classes": data.num_classes, "task": data.task}
    if regression:  # no model beats this test MSE in expectation: the target noise's variance
        summary["noise_floor"] = cfg["dataset"]["noise"] ** 2
    else:
        summary["data"]["train_class_counts"] = data.class_counts().tolist()
    frozen = freeze(model, cfg.get("freeze"))  # before the optimizer sees the parameters
    if frozen:
        summary["frozen"] = frozen
    if is_hogwild(cfg):  # worker processes train on the shared weights; this process does the rest
        trainer = HogwildTrainer(cfg, model, len(data.train_x), device, observers=observers, threads=threads)
    else:
        trainer = Trainer(cfg, model, len(data.train_x), device, observers=observers,
                          class_counts=data.class_counts())
    group = lockstep.join(trainer, data.input_shape)  # a member of hydra/launcher=vectorized: its group trains the epochs
    if group is not None:  # its time_s / train_s are the group's (shared by the members)
        summary["vectorized"] = group
    stopper = EarlyStopping.from_config(cfg["early_stopping"])
    if parent is not None:
        parent.keep_plan(cfg, trainer)  # before any state is loaded: a schedule made for the parent's length

    log.info("run dir %s | device %s | threads %d | params %d", run.path, device, threads, summary["params"])
    state = LoopState()
    if ctx.resume and run.checkpoint_path.exists():
        state = _restore(run, cfg, model, trainer, stopper)
    elif parent is not None:
        state = _restore(run, cfg, model, trainer, stopper, parent)
        if distributed.is_rank0():
            parent.copy_init_model(run.path)
    else:  # a fresh start: the transferred weights (init_from) are the run's starting point
        if cfg.get("init_from"):
            summary["init_from"] = load_into(model, cfg["init_from"])
        run.save_model(model, layout.INIT_MODEL)  # for loss landscapes
    if ctx.resume:
        summary["resumed_from_epoch"] = state.epoch
        log.info("resuming after epoch %d%s", state.epoch, " (mid-epoch)" if trainer.partial else "")
    run.write_metrics(state.rows)  # drops rows a killed run wrote after its last checkpoint: they are redone
    epoch_of = [state.epoch + 1]  # the epoch a step-interval evaluation falls in
    if cfg.get("eval_every_steps"):
        run.write_rows_kept(run.path / layout.EVALS, lambda r: r.get("total_steps", 0) <= trainer.counters.total_steps)
        trainer.eval_every = cfg["eval_every_steps"]
        trainer.on_eval = _eval_logger(run, cfg, model, data, trainer, epoch_of)
    observers.on_run_start(RunInfo(cfg, run.path, model, trainer.optimizer, data.train_x, data.train_y,
                                   write=distributed.is_rank0(), resumed_epoch=state.epoch))

    def checkpoint(epoch_elapsed: float = 0.0, latest: bool = True, best: bool = False) -> None:
        ckpt = make_checkpoint(cfg, model, trainer, stopper, device, metrics=state.rows,
                               progress=state.progress(epoch_elapsed), rows_text=state.rows_text)
        run.save_checkpoint(ckpt, latest=latest, best=best)

    every, keep = cfg["checkpoint"]["every"], cfg["checkpoint"].get("keep", "last")
    last_epoch = cfg["epochs"] if state.stop_reason == "max_epochs" else state.epoch  # early stopping ended it
    interrupt = Interrupt().install()
    if trainer.world == 1:  # under DDP the ranks must agree, so they stop at epoch boundaries only
        trainer.should_stop = lambda: interrupt.requested

    def validation(model) -> dict:  # every rank scores a share of the split
        return evaluate_split(model, data.val_x, data.val_y, cfg["eval_batch_size"], cfg["precision"], sharded=True)

    untested = {"test/loss": None, **({} if regression else {"test/acc": None})}  # a run that ended untested

    def best_val() -> dict:  # the best validation score so far: regression's lowest MSE, else accuracy
        return {"best/val/loss": state.best_val_loss} if regression else {"best/val/acc": state.best_val_acc}

    def epoch_start(epoch: int) -> None:
        epoch_of[0] = epoch
        if stop_agreed(interrupt, device):
            raise Interrupted(f"the end of epoch {epoch - 1}")

    def measure(row: dict) -> None:
        row.update(trainer.weights.raw_metrics(data.val_x, data.val_y, cfg["eval_batch_size"],
                                               cfg["precision"]))
        row.update(trainer.counters.as_row())

    def record(row: dict) -> None:
        _log_epoch_eval(run, cfg, row)
        state.train_time_s += row["time_s"]
        state.epoch = row["epoch"]
        run.append_metrics(row)
        state.rows.append(row)
        progress.end_epoch(row)
        if regression:
            if row["val/loss"] < state.best_val_loss:
                state.best_val_loss, state.best_val_epoch = row["val/loss"], row["epoch"]
        elif row["val/acc"] > state.best_val_acc:
            state.best_val_acc, state.best_val_epoch = row["val/acc"], row["epoch"]

    def epoch_end(row: dict) -> bool:  # the schedules advanced: what the checkpoint must hold
        epoch = row["epoch"]
        if stopper is not None and stopper.step(epoch, row, model):
            state.stop_reason = "early_stopping"
            log.info("early stopping: %s did not improve for %d epochs (best %.4g at epoch %d)",
                     stopper.monitor, stopper.patience, stopper.best, stopper.best_epoch)
        if observers:
            observers.on_epoch_end(EpochInfo(epoch, row, model, trainer.optimizer,
                                             trainer.counters.total_steps))
        latest = bool(every) and (epoch % every == 0 or epoch == last_epoch or state.stop_reason != "max_epochs")
        best = keep == "best" and state.best_val_epoch == epoch
        if latest or best:
            checkpoint(latest=latest, best=best)
        return state.stop_reason != "max_epochs"

    try:
        with Progress(cfg["epochs"], live=ctx.live_progress, prefix=ctx.progress_prefix) as progress:
            trainer.start()  # before the first epoch: a start-up is not training time
            fit(trainer, data, range(state.epoch + 1, last_epoch + 1),
                FitHooks(epoch_start, measure, record, epoch_end), progress, validation,
                state.epoch_elapsed_s)
    except Diverged as d:
        summary.update(status=layout.Status.DIVERGED, epochs=state.epoch, train_time_s=state.train_time_s,
                       diverged_at={"epoch": d.epoch, "step": d.step}, **untested,
                       message=f"training diverged: {d}; metrics of the {state.epoch} finished epoch(s) are kept")
        return _end(run, observers, summary, log.error)
    except StopRun as s:
        summary.update(status=s.status, epochs=state.epoch, train_time_s=state.train_time_s,
                       **{**best_val(), "best/val/epoch": state.best_val_epoch, **untested}, message=str(s))
        return _end(run, observers, summary, log.info)
    except Interrupted as i:
        # a second signal here exits at once (the handlers stay until `finally`): files are atomic
        checkpoint(i.elapsed_s if trainer.partial is not None else 0.0)
        summary.update(status=layout.Status.INTERRUPTED, signal=interrupt.name, exit_code=interrupt.exit_code,
                       epochs=state.epoch, train_time_s=state.train_time_s, **untested,
                       message=f"interrupted by {interrupt.name} at {i}; checkpoint saved, continue with: "
                               f"nnopt train resume={run.path}")
        observers.close()
        run.write_summary(summary)
        log.warning("%s", summary["message"])
        return summary
    except BaseException:
        observers.close()
        raise
    finally:
        interrupt.restore()
        trainer.should_stop = lambda: False
        trainer.close()

    if stopper is not None and stopper.restore_best and stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
        summary["restored_epoch"] = stopper.best_epoch
    test = evaluate_split(model, data.test_x, data.test_y, cfg["eval_batch_size"], cfg["precision"], sharded=True)
    test_loss = test["loss"]
    run.save_model(model)
    stages = stage_names(cfg)
    summary.update({
        # a run is completed only once its post-training stages are: a kill during them must not
        # leave a folder that resume / skip_completed take for finished
        "status": layout.Status.POST_TRAINING if stages else layout.Status.COMPLETED,
        **{f"test/{k}": v for k, v in test.items()},
        "flops": forward_flops(model, data.input_shape),  # forward FLOPs per sample (post/flops.py)
        **best_val(),
        "best/val/epoch": state.best_val_epoch,
        "epochs": state.epoch,
        "stop_reason": state.stop_reason,
        "train_time_s": state.train_time_s,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    run.write_summary(summary)
    written = copy.deepcopy(summary)  # what summary.json holds now
    shown = f"test/rmse={test['rmse']:.4f} (noise floor {summary['noise_floor'] ** 0.5:.4f})" if regression \
        else f"test/acc={test['acc']:.4f}"
    log.info("%s test/loss=%.4f (%d epochs, %.1fs) -> %s", shown, test_loss, state.epoch, state.train_time_s, run.path)
    if stages:  # post-training stages (nnopt_cli/post), on the saved model
        # under DDP the stages are single-process work on the trained model: the process group
        # ends here, the other ranks finish, and rank 0 runs them with plain (non-DDP) training
        if not distributed.leave_to_rank0():
            observers.close()
            return summary
        try:
            run_stages(cfg, model, data, run, summary, device)
        except BaseException:
            observers.close()
            raise
        summary["status"] = layout.Status.COMPLETED
    observers.on_run_end(summary)
    observers.close()
    if summary != written:  # the stages or an observer added to it (each write costs two disk syncs)
        run.write_summary(summary)
    removed = run.remove_unkept_checkpoints(keep)  # once the summary says completed
    if removed:
        log.info("checkpoint.keep=%s: removed %s", keep, ", ".join(removed))
    return summary


def _log_epoch_eval(run: RunDir, cfg: dict, row: dict) -> None:
    """With eval_every_steps, evals.jsonl also gets the epoch-end evaluation (unless a step-interval
    evaluation fell on the same step)."""
    if not cfg.get("eval_every_steps") or row["total_steps"] % cfg["eval_every_steps"] == 0:
        return
    keys = ("epoch", "total_steps", "samples_seen", "forward_passes", "backward_passes", "train_s",
            *(f"val/{k}" for k in EVAL_KEYS))
    run.append_jsonl(run.path / layout.EVALS, {k: row[k] for k in keys if k in row})


def _end(run: RunDir, observers, summary: dict, say) -> dict[str, Any]:
    """A run that ended before its test evaluation (diverged, or stopped by an observer)."""
    observers.on_run_end(summary)
    observers.close()
    run.write_summary(summary)
    say("%s (status: %s)", summary["message"], summary["status"])
    return summary

