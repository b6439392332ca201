"""One writer per run folder: an fcntl.flock on `<run>/.nnopt.lock` that names its holder.

Every `nnopt train` job takes it (train_app) before it reads or writes its folder, so two
`resume=` of one folder, or two identical `skip_completed=true` sweeps, never write it at once.
The kernel drops a flock when its process dies (kill -9 included): a killed run's folder is free at
once, and the next holder deletes the temporary files the killed one left.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from nnopt_cli.store.folder import RunDirError, remove_file

log = logging.getLogger("nnopt")

LOCK_FILE = ".nnopt.lock"
_HELD: dict[str, int] = {}  # folders this process has locked -> nesting depth


class RunLocked(RunDirError):
    """Another live process is writing this run folder."""


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete `.<file>.tmp<pid>` files a killed writer left (a checkpoint's can be megabytes).
    Only call it holding the folder's lock: then no other process is writing one."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        name = e.name
        if name.startswith(".") and ".tmp" in name and name.rpartition(".tmp")[2].isdigit() and e.is_file(
                follow_symlinks=False):
            remove_file(Path(e.path))
            removed.append(name)
    if removed:
        log.info("removed %d temporary file(s) a killed run left in %s: %s", len(removed), folder, ", ".join(removed))
    return removed


class RunLock:
    """An exclusive lock on a run folder: `<folder>/.nnopt.lock`, fcntl.flock'ed, holding who took it.

    The kernel drops a flock when its process dies (kill -9 included), so a lock left by a killed
    run is taken over at once; the file itself stays (removing it would let two processes lock
    two different files). Where the file system has no flock (some network mounts) the run goes
    on unlocked, with a warning.
    """

    def __init__(self, folder: Path, purpose: str = "nnopt train"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.purpose = purpose
        self.fd: int | None = None
        self.nested = False

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_bytes()[:4096] or b"{}")
            return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} "
                    f"({str(info.get('purpose'))[:80]})")
        except (OSError, ValueError, AttributeError):
            return "another process"

    def acquire(self) -> RunLock:
        key = os.path.realpath(self.folder)
        if key in _HELD:  # this process holds it already (train_app, then runner.train): nested, no-op
            _HELD[key] += 1
            self.fd, self.nested = -1, True
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise RunDirError(f"cannot lock run folder {self.folder}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"run folder {self.folder} is in use by {self.holder()}; refused to write it "
                            "twice at once (wait for that run to end, or stop it)") from None
        except OSError as e:  # ENOLCK / EOPNOTSUPP: no locks on this file system
            log.warning("cannot lock %s (%s): two writers would not be detected", self.folder, e.strerror)
        self.fd, self.nested = fd, False
        _HELD[key] = 1
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "purpose": self.purpose}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:  # a full disk: the lock holds without the note
            pass
        remove_stale_temporaries(self.folder)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        key = os.path.realpath(self.folder)
        _HELD[key] = _HELD.get(key, 1) - 1
        if self.nested or _HELD[key] > 0:
            self.fd = None
            return
        del _HELD[key]
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
