"""Hogwild (async_sgd=hogwild): lock-free asynchronous SGD by processes sharing one model's weights on the CPU.

    nnopt train async_sgd=hogwild async_sgd.workers=4 device=cpu

As in PyTorch's mnist_hogwild example: the model's parameters and buffers move to shared memory
(model.share_memory()) and N worker processes (torch.multiprocessing, started once per run) step them
without locks, each with its own optimizer over those parameters, so every update lands in the weights
the others are reading. Worker r trains on its share of the training split (samples r, r + N, ...) in
its own order (seed + r), so one epoch covers every sample once. Each worker's epoch is an ordinary
Trainer.train_epoch over its share: the one training step, batch-size policy and metric sums of nnopt.

The parent process is the run: between epochs, while the workers wait, it validates, writes metrics,
checkpoints and summary.json. Each worker has its own LR schedule over its own steps; at epoch ends
the parent hands each one the epoch's row (plateau reads its val metrics). A checkpoint holds the
shared weights plus each worker's optimizer state, schedule and generator. A stop request (Ctrl-C,
SIGTERM) reaches the workers through an event: each stops after its current step and reports how far
it got, so the parent's interrupted checkpoint resumes every worker's share of the epoch where it
stopped. The workers ignore the signals themselves (a terminal's Ctrl-C reaches the whole process
group) and leave when the parent does.

Not bit-reproducible: the order in which the workers' reads and writes interleave is the OS scheduler's,
so two runs with the same seed differ (summary.json records it).
"""

from __future__ import annotations

import io
import os
import queue
import signal
import sys
import time
import traceback
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

from nnopt_cli.config.build import locate
from nnopt_cli.config.checks import need_choice, need_int
from nnopt_cli.data import load_splits
from nnopt_cli.errors import ConfigError
from nnopt_cli.optim.optimizers import Protocol, current_lr
from nnopt_cli.optim.staleness import check_staleness
from nnopt_cli.training.device import seed_everything
from nnopt_cli.training.interrupt import Interrupted
from nnopt_cli.training.metrics import Counters, Diverged
from nnopt_cli.training.observers import Observer, Observers, observer_nodes
from nnopt_cli.training.progress import Progress
from nnopt_cli.training.trainer import Trainer

MODES = ("none", "hogwild", "stale")
MAX_WORKERS = 256
WAIT_S = 0.05  # how often the parent, waiting for its workers, looks at a stop request and at dead workers


def is_hogwild(cfg: dict) -> bool:
    return (cfg.get("async_sgd") or {}).get("mode") == "hogwild"


def async_summary(cfg: dict) -> dict[str, Any]:
    """What summary.json says of an asynchronous run (nothing for a synchronous one)."""
    node = cfg.get("async_sgd") or {}
    if node.get("mode") == "hogwild":
        return {"async_sgd": {"mode": "hogwild", "workers": node["workers"], "bit_reproducible": False}}
    if node.get("mode") == "stale":
        return {"async_sgd": {"mode": "stale", "staleness": node["staleness"], "bit_reproducible": True}}
    return {}


def check_async_sgd(cfg: dict, torchrun: bool) -> None:
    """The async_sgd group: its mode, then what that mode needs of the rest of the config."""
    node = cfg.get("async_sgd") or {"mode": "none"}  # a config written before the group existed
    need_choice("async_sgd.mode", node.get("mode"), MODES)
    if node["mode"] == "stale":
        check_staleness(node, Protocol.from_config(cfg["optimizer"]).step, cfg["precision"])
    elif node["mode"] == "hogwild":
        check_hogwild(cfg, torchrun)


def check_hogwild(cfg: dict, torchrun: bool) -> None:
    """Everything hogwild cannot run with, in one line each, before any data is loaded."""
    need_int("async_sgd.workers", cfg["async_sgd"].get("workers"), 1, MAX_WORKERS)

    def refuse(why: str) -> None:
        raise ConfigError("async_sgd", "hogwild", why)

    if "forkserver" not in mp.get_all_start_methods():
        refuse("needs the forkserver start method of Python's multiprocessing (Linux, macOS), which this "
               "platform lacks")
    if torchrun:
        refuse("cannot run under torchrun/DDP (its workers are processes of one machine); start it without torchrun")
    if cfg["device"] != "cpu":
        refuse(f"trains on the CPU only (shared-memory weights), got device={cfg['device']}; set device=cpu")
    if cfg["precision"] != "fp32":
        refuse(f"runs in fp32 only, got precision={cfg['precision']}; set precision=fp32")
    proto = Protocol.from_config(cfg["optimizer"])
    if proto.step != "plain":
        refuse(f"needs an optimizer that applies one gradient per step (step=plain), got "
               f"step={proto.step} ({cfg['optimizer'].get('_target_')}); use e.g. optimizer=sgd, momentum or adam")
    if proto.train_eval:
        refuse("cannot run schedule-free optimizers (optimizer.train_eval=true swaps the shared weights "
               "in place while other workers train); use e.g. optimizer=sgd, momentum or adam")
    if cfg["optimizer"].get("wrapper") is not None:
        refuse("cannot run an optimizer wrapper (optimizer/wrapper writes its own copy of the weights over "
               "the shared ones); set optimizer/wrapper=null")
    if (cfg.get("averaging") or {}).get("name", "none") != "none":
        refuse(f"cannot average weights (averaging={cfg['averaging'].get('name')} updates after every "
               "step, and the steps happen in the workers); set averaging=none")
    if cfg.get("eval_every_steps") is not None:
        refuse("validates at epoch ends only; set eval_every_steps=null")
    if (cfg.get("loss") or {}).get("class_weights") is not None or cfg["batch_size"].get("sampler", "random") != "random":
        refuse("samples each worker's share of the data uniformly: set loss.class_weights=null and "
               "batch_size.sampler=random")
    for name, node in observer_nodes(cfg).items():
        if isinstance(node, dict) and "_target_" in node:
            cls = locate(f"{name}._target_", node["_target_"], Observer)
            if cls.before_step is not Observer.before_step or cls.after_step is not Observer.after_step:
                refuse(f"runs epoch-level observers only, and {name} ({node['_target_']}) watches steps, "
                       "which happen in the worker processes; remove it")


# ---------------------------------------------------------------------------- the parent


class HogwildTrainer(Trainer):
    """The run's trainer in the parent: `train_epoch` has the workers train the epoch on the shared
    weights and returns its metrics; everything else (checkpoints, schedules) is a Trainer's."""

    def __init__(self, cfg: dict, model: nn.Module, n_train: int, device: torch.device,
                 observers: Observers | None = None, threads: int = 1):
        super().__init__(cfg, model, n_train, device, observers=observers)
        self.workers = int(cfg["async_sgd"]["workers"])
        self.worker_threads = max(1, threads // self.workers)
        model.share_memory()  # in place: the parent's checkpoints and evaluations read the shared weights
        # each worker's optimizer, LR schedule and generator after its last report (checkpointed; None: fresh)
        self.worker_states: list[dict | None] = [None] * self.workers
        self._procs: list[Any] = []

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "hogwild": {"workers": list(self.worker_states)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state["hogwild"]["workers"]
        if len(saved) != self.workers:
            raise ValueError(f"the checkpoint has {len(saved)} hogwild workers, this run {self.workers}")
        self.worker_states = list(saved)

    def _start(self) -> None:
        # a fork server imports torch and nnopt once and forks each worker from that single-threaded
        # process (a fork of this one, whose thread pools have started, could deadlock the child)
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        self._stop, self._outbox = ctx.Event(), ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(self.workers)]
        for rank in range(self.workers):
            # daemonic: ended with this process; a daemonic process (a pool's worker) may have no children
            p = ctx.Process(target=_worker, daemon=not mp.current_process().daemon, name=f"nnopt-hogwild-{rank}",
                            args=(rank, self.workers, self.cfg, self.model, _pack(self.worker_states[rank]),
                                  self.worker_threads, self._inboxes[rank], self._outbox, self._stop,
                                  os.getpid()))
            p.start()
            self._procs.append(p)

    def start(self) -> None:
        """Start the workers and wait until each has its data and optimizer (before the epochs: their
        start-up is not training time)."""
        if self._procs:
            return
        self._start()
        ready: set[int] = set()
        while len(ready) < self.workers:
            kind, rank, payload = self._receive(ready)
            if kind == "ready":
                ready.add(rank)

    def _receive(self, reported: set[int], pass_stop: bool = False) -> tuple[str, int, Any]:
        """The next message of a worker; a worker's error or death is raised here. pass_stop: while
        waiting, hand a stop request on to the workers (they are training)."""
        while True:
            try:
                kind, rank, payload = self._outbox.get(timeout=WAIT_S)
            except queue.Empty:
                self._check_alive(reported)
                if pass_stop:
                    self._pass_stop()
                continue
            if kind == "error":  # the traceback's last line (the error itself) first: the one line shown
                last = next((line for line in reversed(payload.splitlines()) if line.strip()), "")
                raise RuntimeError(f"hogwild worker {rank} failed: {last.strip()}\n{payload}")
            return kind, rank, payload

    def close(self) -> None:
        """End the workers (the run is over, or failed)."""
        if not self._procs:
            return
        self._stop.set()
        for box in self._inboxes:
            box.put(("close", None))
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
        self._procs = []

    def train_epoch(self, epoch: int, x_all: torch.Tensor, y_all: torch.Tensor,
                    progress: Progress | None = None) -> dict[str, Any]:
        t_start = time.perf_counter()
        self.epoch = epoch
        self.model.train()
        self.start()
        part = self.partial if self.partial and self.partial["epoch"] == epoch else None
        self.partial = None
        finished = dict(part["finished"]) if part is not None else {}  # worker -> its row of this epoch
        self._stop.clear()
        self._pass_stop()
        for rank in range(self.workers):
            if rank not in finished:
                cut = part["cut"].get(rank) if part is not None else None
                self._inboxes[rank].put(("epoch", _pack({"epoch": epoch, "partial": cut})))
        if progress is not None:
            progress.start_epoch(epoch, 1)  # the steps happen in the workers: one mark per epoch
        cut: dict[int, dict] = {}
        while len(finished) + len(cut) < self.workers:
            kind, rank, payload = self._receive(set(finished) | set(cut), pass_stop=True)
            report = _unpack(payload)
            if kind == "diverged":
                raise Diverged(epoch, report["step"], report["loss"])
            self.worker_states[rank] = report["state"]
            c = Counters(**report["counters"])
            self.counters.total_steps += c.total_steps
            self.counters.samples_seen += c.samples_seen
            self.counters.forward_passes += c.forward_passes
            self.counters.backward_passes += c.backward_passes
            if kind == "stopped":
                cut[rank] = report["partial"]
            else:
                finished[rank] = report["row"]
        self.counters.train_s += time.perf_counter() - t_start
        if cut:  # resume gives each stopped worker its cut and uses the finished workers' rows as they are
            self.partial = {"epoch": epoch, "cut": cut, "finished": finished}
            raise Interrupted(f"epoch {epoch}, {sum(int(c['step']) for c in cut.values())} steps of "
                              f"{len(cut)} worker(s) into it")
        return self._epoch_row([finished[r] for r in range(self.workers)], len(x_all))

    def end_epoch(self, row: dict) -> None:
        """Each worker advances its own epoch-level LR schedule (with the row's val metrics, for
        plateau) and reports its state, which the checkpoint written next holds."""
        super().end_epoch(row)
        if self.scheduler is None or self.interval != "epoch" or not self._procs:
            return
        for box in self._inboxes:
            box.put(("end_epoch", _pack(row)))
        ended: set[int] = set()
        while len(ended) < self.workers:
            _, rank, payload = self._receive(ended)
            self.worker_states[rank] = _unpack(payload)["state"]
            ended.add(rank)

    def _pass_stop(self) -> None:
        if not self._stop.is_set() and self.should_stop():
            self._stop.set()  # each worker stops after its current step and reports how far it got

    def _check_alive(self, reported: set[int]) -> None:
        for rank, p in enumerate(self._procs):
            if rank not in reported and not p.is_alive():
                raise RuntimeError(f"hogwild worker {rank} exited (code {p.exitcode}) before finishing its "
                                   "share of the epoch; its error, if any, is above")

    def _epoch_row(self, rows: list[dict], n: int) -> dict[str, Any]:
        """One epoch row from the workers' rows over their shares (sizes n_r): sums over the shares."""
        sizes = [len(range(r, n, self.workers)) for r in range(self.workers)]
        norms = [r["grad_norm"] for r in rows if r.get("grad_norm") is not None]
        row = {
            "train/loss": sum(r["train/loss"] * s for r, s in zip(rows, sizes, strict=True)) / n,
            "train/acc": sum(round(r["train/acc"] * s) for r, s in zip(rows, sizes, strict=True)) / n,
            "lr": rows[0]["lr"] if rows else current_lr(self.optimizer),
            "batch_size": rows[0]["batch_size"],
            "steps": sum(r["steps"] for r in rows),  # the optimizer steps of all workers together
            "grad_norm": sum(norms) / len(norms) if norms else None,
        }
        if "train/penalty" in rows[0]:
            row["train/penalty"] = sum(r["train/penalty"] * s for r, s in zip(rows, sizes, strict=True)) / n
        return row


# ---------------------------------------------------------------------------- a worker


def _pack(obj: Any) -> bytes:
    """Tensors and plain containers as bytes: through a queue without shared-memory file descriptors."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unpack(blob: bytes) -> Any:
    return torch.load(io.BytesIO(blob), weights_only=True)


def _worker(rank: int, workers: int, cfg: dict, model: nn.Module, state: bytes, threads: int,
            inbox, outbox, stop, parent_pid: int) -> None:
    """One worker process: waits for an epoch, trains its share of it on the shared weights, reports."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)  # the parent decides when to stop, and tells the workers
    try:
        _serve(rank, workers, cfg, model, state, threads, inbox, outbox, stop, parent_pid)
        # the parent reads nothing more (or is gone): a report it left unread must not hold the exit
        outbox.cancel_join_thread()
    except BaseException:
        outbox.put(("error", rank, traceback.format_exc()))  # the parent is waiting for it
    # out without the interpreter's teardown of torch (seconds): flush what is still to send, then exit
    outbox.close()
    outbox.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve(rank: int, workers: int, cfg: dict, model: nn.Module, state: bytes, threads: int,
           inbox, outbox, stop, parent_pid: int) -> None:
    """Train each epoch the parent hands out; return when it says close, or when it is gone."""
    trainer, x, y = _worker_setup(rank, workers, cfg, model, _unpack(state), threads)
    parent_gone = lambda: not _alive(parent_pid)  # noqa: E731
    trainer.should_stop = lambda: stop.is_set() or parent_gone()
    outbox.put(("ready", rank, None))
    while True:
        try:
            kind, payload = inbox.get(timeout=1.0)
        except queue.Empty:
            if parent_gone():
                return
            continue
        if kind == "close":
            return
        if kind == "end_epoch":
            trainer.end_epoch(_unpack(payload))
            outbox.put(("ended", rank, _pack({"state": _state(trainer)})))
            continue
        job = _unpack(payload)
        trainer.partial = job["partial"]
        trainer.counters = Counters()  # the parent adds each epoch's counts to the run's
        try:
            row = trainer.train_epoch(job["epoch"], x, y)
            kind, report = "done", {"row": row}
        except Interrupted:
            kind, report = "stopped", {"partial": trainer.partial}
        except Diverged as d:
            outbox.put(("diverged", rank, _pack({"step": d.step, "loss": d.loss})))
            continue
        report.update(counters=trainer.counters.as_row(), state=_state(trainer))
        outbox.put((kind, rank, _pack(report)))


def _state(trainer: Trainer) -> dict[str, Any]:
    """What a worker's checkpoint entry holds: its optimizer, LR schedule and data-order generator."""
    return {"optimizer": trainer.optimizer.state_dict(), "generator": trainer.generator.get_state(),
            "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_setup(rank: int, workers: int, cfg: dict, model: nn.Module, state: dict | None,
                  threads: int) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(threads)
    seed = cfg["seed"] + rank  # its own data order and dropout masks
    seed_everything(seed, cfg["deterministic"])
    data = load_splits(cfg["dataset"])  # its own copy: no shared-memory data (/dev/shm may be small)
    x, y = data.train_x[rank::workers].contiguous(), data.train_y[rank::workers].contiguous()
    trainer = Trainer({**cfg, "seed": seed}, model, len(x), torch.device("cpu"))
    if state is not None:
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.generator.set_state(state["generator"])
        if trainer.scheduler is not None:
            trainer.scheduler.load_state_dict(state["scheduler"])
    return trainer, x, y
