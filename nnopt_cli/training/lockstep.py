"""Runs that train their epochs together: each member is a whole run (its recipe, its folder, its
checkpoints) in a thread of its own, and only its epochs' training is done by the group (vectorized.py).

The threads take turns, never run at once: a member runs until it needs an epoch trained (or ends),
then hands the turn back. So each member's setup (seeding, model init) happens as it would in a run of
its own, one after the other, and nothing is shared between members but the epoch's training. The
coordinating thread (the sweep's) trains the epoch of every member waiting for one, then gives each its
row back in turn. Signals reach the coordinating thread: its Interrupt is every member's (interrupt.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nnopt_cli import data
from nnopt_cli.models.flops import forward_flops
from nnopt_cli.training import vectorized
from nnopt_cli.training.interrupt import Interrupt

_seat = threading.local()
log = logging.getLogger("nnopt")
# the forward FLOPs a sample above which a model trains no faster stacked on a CPU with one thread
# (benchmarks/vectorized.py: the MNIST-1D MLP, 25,600, gained; the MNIST MLP, 406,528, lost)
CPU_MAX_FLOPS = 50_000


@dataclass
class Member:
    """One run's seat in the group."""

    index: int
    size: int
    turn: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    trainer: Any = None
    x: Any = None
    y: Any = None
    epoch: int | None = None  # the epoch it waits to have trained; None while it runs on its own
    progress: Any = None
    result: Any = None
    train_s: float = 0.0  # the seconds the group took to train the epoch it waited for
    done: bool = False
    outcome: Any = None  # what the run returned
    error: BaseException | None = None


def current() -> Member | None:
    """This thread's seat, when it runs a member of a group."""
    return getattr(_seat, "member", None)


def join(trainer, input_shape) -> dict | None:
    """Called by the recipe with the run's Trainer: in a member's thread, its epochs are trained by
    the group from now on. Returns what the run's summary records about it (None: a run of its own,
    also a member whose model is too heavy to gain from stacking on a CPU: see Group)."""
    member = current()
    if member is None:
        return None
    group: Group = _seat.group
    limit = group.cpu_max_flops
    if limit is not None and trainer.device.type == "cpu":
        flops = forward_flops(trainer.model, input_shape)
        if flops > limit:
            if not group.told:
                log.info("vectorized: on the CPU this model (%d forward FLOPs a sample, above "
                         "cpu_max_flops=%d) is arithmetic-bound: the %d runs train one by one, which is "
                         "faster", flops, limit, member.size)
                group.told = True
            return None
    member.trainer = trainer
    trainer.train_epoch = lambda epoch, x, y, progress=None: _wait_for_epoch(member, epoch, x, y, progress)
    return {"members": member.size, "member": member.index}


def _wait_for_epoch(member: Member, epoch: int, x, y, progress) -> dict:
    member.epoch, member.x, member.y, member.progress = epoch, x, y, progress
    parked = time.perf_counter()
    _seat.group.turn_back.release()
    member.turn.acquire()
    member.epoch = None
    result = member.result
    member.result = None
    if isinstance(result, BaseException):
        raise result
    # the epoch's time_s (fit.py) is the group's training time, not the other members' turns
    return {**result, "waited_s": time.perf_counter() - parked - member.train_s}


class Group:
    """Runs `jobs` (each a function running one whole run) as one group. cpu_max_flops: on a CPU, runs
    of a model above that many forward FLOPs a sample train their epochs on their own (None: never).
    In the coordinating thread,
    on_turn(i) is called before member i gets the turn and after_turn(i) once it handed it back (to
    put that job's logging back, say)."""

    def __init__(self, jobs: list[Callable[[], Any]], on_turn: Callable[[int], None] = lambda i: None,
                 after_turn: Callable[[int], None] = lambda i: None, cpu_max_flops: int | None = None):
        self.jobs, self.on_turn, self.after_turn = jobs, on_turn, after_turn
        # on a CPU a step of a model above this many forward FLOPs a sample is arithmetic-bound: a stacked
        # step costs what the members' steps cost (more, for the MNIST MLP), so they train one by one
        self.cpu_max_flops = cpu_max_flops
        self.told = False
        self.members = [Member(i, len(jobs)) for i in range(len(jobs))]
        self.turn_back = threading.Semaphore(0)
        self.interrupt = Interrupt()

    def _thread(self, member: Member) -> None:
        _seat.member, _seat.group = member, self
        member.turn.acquire()
        try:
            member.outcome = self.jobs[member.index]()
        except BaseException as e:  # noqa: BLE001 - handed to the coordinating thread
            member.error = e
        finally:
            member.done = True
            self.turn_back.release()

    def _give_turn(self, member: Member) -> None:
        self.on_turn(member.index)
        member.turn.release()
        self.turn_back.acquire()
        self.after_turn(member.index)

    def run(self) -> list[Member]:
        """Every member to its end; each member's outcome or error is on it."""
        with self.interrupt.shared(), data.shared_between_runs():
            threads = [threading.Thread(target=self._thread, args=(m,), daemon=True,
                                        name=f"nnopt-member-{m.index}") for m in self.members]
            for member, thread in zip(self.members, threads, strict=True):
                thread.start()
                self._give_turn(member)  # its setup, alone, up to its first epoch
            while True:
                waiting = [m for m in self.members if not m.done]
                if not waiting:
                    break
                for batch in _aligned(waiting):
                    t0 = time.perf_counter()
                    results = vectorized.train_epoch([m.trainer for m in batch], batch[0].epoch, batch[0].x,
                                                     batch[0].y, lambda: self.interrupt.requested,
                                                     [m.progress for m in batch])
                    for m, r in zip(batch, results, strict=True):
                        m.result, m.train_s = r, time.perf_counter() - t0
                for member in waiting:
                    self._give_turn(member)
            for thread in threads:
                thread.join()
        return self.members


def _aligned(waiting: list[Member]) -> list[list[Member]]:
    """The waiting members grouped by where they are (epoch, and the step a resumed epoch starts at)."""
    groups: dict[tuple, list[Member]] = {}
    for m in waiting:
        part = m.trainer.partial
        step = part["step"] if part and part["epoch"] == m.epoch else 0
        groups.setdefault((m.epoch, step), []).append(m)
    return list(groups.values())
