"""Ctrl-C and SIGTERM: finish the current step, checkpoint, and exit 130 / 143.

The first SIGINT or SIGTERM only sets a flag; the training loop looks at it at every step
boundary (a Python bool, no device sync), saves a checkpoint and a summary with
`status: interrupted`, and the app exits with 128 + the signal number. A second signal exits
at once: the checkpoint and summary on disk are then the last ones written, never half ones,
because every file of a run folder is replaced atomically.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Raised at a step boundary after a stop was requested; the trainer keeps the epoch's state.
    elapsed_s: the seconds the cut epoch had run (fit sets it), for the checkpoint."""

    elapsed_s: float = 0.0


class Interrupt:
    """Context manager that turns SIGINT/SIGTERM into a stop request (main thread only; in another
    thread it follows the main thread's `shared` Interrupt, if one is installed)."""

    _shared: Interrupt | None = None  # the main thread's, while runs train in threads (lockstep.py)

    def __init__(self, hard_exit: Callable[[int], None] = os._exit):
        self._signum: int | None = None
        self._follows: Interrupt | None = None
        self._hard_exit = hard_exit
        self._previous: dict[int, object] = {}

    @property
    def signum(self) -> int | None:
        return self._signum if self._follows is None else self._follows.signum

    @signum.setter
    def signum(self, value: int | None) -> None:
        self._signum = value

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def check(self) -> None:
        """Raise Interrupted if a stop was requested (call it at a step or epoch boundary)."""
        if self.signum is not None:
            raise Interrupted(self.name)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"\nnnopt: second {name}: exiting now (the last checkpoint is kept)", file=sys.stderr, flush=True)
            self._hard_exit(128 + signum)
            return
        self.signum = signum
        print(f"\nnnopt: {name} received: stopping after this step and saving a checkpoint "
              "(press Ctrl-C again to exit at once)", file=sys.stderr, flush=True)

    def install(self) -> Interrupt:
        # signal handlers can only be set from the main thread (train() may run in a worker thread)
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        else:
            self._follows = Interrupt._shared
        return self

    @contextlib.contextmanager
    def shared(self) -> Iterator[Interrupt]:
        """Installed, and followed by the Interrupts that threads install meanwhile."""
        self.install()
        Interrupt._shared = self
        try:
            yield self
        finally:
            Interrupt._shared = None
            self.restore()

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def __enter__(self) -> Interrupt:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()
