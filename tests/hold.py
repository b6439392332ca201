"""Hold a run at a known point until the test releases it, so a signal or a kill reaches a run
mid-training without a long run and a race against its clock.

    +observers.hold._target_=tests.hold.HoldAfterEpoch +observers.hold.flag_dir=<dir>

The run writes <dir>/held-<run folder name> at the end of epoch `epoch` and waits there until
<dir>/release exists (a run started after the release passes through), or until the run is asked
to stop (Ctrl-C, SIGTERM): then it writes <dir>/stopped-<run folder name> and goes on, so the
stop lands at the next step boundary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nnopt_cli.training.observers import EpochInfo, Observer, RunInfo


class HoldAfterEpoch(Observer):
    def __init__(self, flag_dir: str, epoch: int = 1, run_name: str | None = None, timeout_s: float = 300.0):
        self.flags, self.epoch, self.run_name, self.timeout_s = Path(flag_dir), epoch, run_name, timeout_s
        self.name = ""

    def on_run_start(self, run: RunInfo) -> None:
        self.name = Path(run.run_dir).name

    def on_epoch_end(self, epoch: EpochInfo) -> None:
        if epoch.epoch != self.epoch or (self.run_name is not None and self.name != str(self.run_name)):
            return
        if (self.flags / "release").exists():
            return
        (self.flags / f"held-{self.name}").write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout_s
        while not (self.flags / "release").exists():
            if stop_requested():
                (self.flags / f"stopped-{self.name}").write_text(str(os.getpid()))
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"held for {self.timeout_s:.0f} s and never released")
            time.sleep(0.01)


def stop_requested() -> bool:
    """Whether this process's training loop was asked to stop: its SIGINT handler is the run's
    Interrupt (nnopt_cli/training/interrupt.py), which records the signal."""
    owner = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    return bool(getattr(owner, "requested", False))


def hold_overrides(flag_dir: Path, **settings) -> list[str]:
    return ["+observers.hold._target_=tests.hold.HoldAfterEpoch", f"+observers.hold.flag_dir={flag_dir}",
            *(f"+observers.hold.{k}={v}" for k, v in settings.items())]


def wait_until_held(flag_dir: Path, count: int, proc: subprocess.Popen, timeout_s: float = 180.0,
                    what: str = "held") -> list[str]:
    """The names of the runs held (what="stopped": stopped while held) once `count` of them are;
    fails, never waits on, a process that ended or a hold that never came."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = sorted(p.name[len(what) + 1:] for p in flag_dir.glob(f"{what}-*"))
        if len(held) >= count:
            return held
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {count} run(s) were {what}: "
                        f"{(proc.stderr.read() if proc.stderr else '')[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{len(held)} of {count} run(s) were {what} in {timeout_s:.0f} s")
        time.sleep(0.02)


def release(flag_dir: Path) -> None:
    (flag_dir / "release").write_text("")
