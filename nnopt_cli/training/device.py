"""Where a run executes: device choice, CPU threads, seeding and determinism.

torch is imported by the functions that use it: the thread limits are checked with the rest of the
config before torch is loaded (`nnopt train` answers a config error in a fraction of a second)."""

from __future__ import annotations

import logging
import math
import os
import random
from types import EllipsisType
from typing import TYPE_CHECKING

from nnopt_cli.errors import ConfigError

if TYPE_CHECKING:
    import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def resolve_device(spec: str) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps -> torch.device, refusing devices this machine does not have.
    auto picks CUDA when there is one, else the CPU (MPS only when asked for: some ops lack kernels)."""
    import torch

    allowed = "auto, cpu, cuda, cuda:N or mps"
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError("device", spec, "CUDA is not available on this machine; use auto or cpu")
        index = spec.partition(":")[2]
        if index:
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise ConfigError("device", spec, f"this machine has {torch.cuda.device_count()} CUDA device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device(spec)
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device", spec, "MPS (Apple silicon) is not available on this machine; use auto or cpu")
        return torch.device("mps")
    raise ConfigError("device", spec, f"one of {allowed}")


# CPU threads per core beyond which nnopt refuses `threads` (100000 threads crash torch)
THREADS_PER_CORE = 4
_pinned_threads: int | None = None


def max_threads() -> int:
    return max(THREADS_PER_CORE, THREADS_PER_CORE * available_cores())


def pin_threads(threads: int | None) -> None:
    """Make `threads=null` mean this count (a resumed run keeps the count it was recorded with,
    so its float sums stay bit-exact on a machine with another number of cores). None unpins."""
    global _pinned_threads
    _pinned_threads = None if threads is None else max(1, min(int(threads), max_threads()))
    if threads is not None and _pinned_threads != threads:
        logging.getLogger("nnopt").warning("the run used %d threads; this machine allows at most %d, so a "
                                           "resumed run may not match bit for bit", threads, _pinned_threads)


def load_average() -> float | None:
    """Runnable processes on this machine, averaged over the last minute; None where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None


def default_threads(cores: int, load: float | None, parallel_jobs: int = 1, machine_cores: int | None = None) -> int:
    """What `threads=null` means. With N parallel jobs: cores / N each. Alone: the cores other
    processes leave idle (the machine's cores - the load average, rounded), at most the cores this
    process may use, at least 1. Torch's threads wait for each other at every operation, so one of
    them preempted by another process stalls them all: on a 2-core machine with other work an epoch
    took 4-45x longer with every core than with one thread, while every core gained 10-15% on an
    idle machine. Where the load is unknown, one thread."""
    if parallel_jobs > 1:
        return max(1, cores // parallel_jobs)
    if load is None:
        return 1
    idle = (machine_cores or cores) - load
    return max(1, min(cores, math.floor(idle + 0.5)))


def oversubscribed(threads: int, load: float | None, machine_cores: int) -> bool:
    """More threads than the cores other processes leave idle (half a core of slack), where it
    matters: one thread cannot stall on another."""
    return threads > 1 and load is not None and threads > machine_cores - load + 0.5


def configure_threads(threads: int | None, parallel_jobs: int = 1, *, cores: int | None = None,
                      load: float | None | EllipsisType = ..., machine_cores: int | None = None) -> int:
    """Set torch's intra-op threads: `threads` if given, else the count a resumed run recorded, else
    default_threads, capped by OMP_NUM_THREADS where set. Warns in one line when the cores are
    already busy. `cores` (this process's), `load` and `machine_cores` (what the load average
    counts) are this machine's unless given."""
    if cores is None:
        cores, machine_cores = available_cores(), machine_cores or os.cpu_count()
    machine_cores = max(cores, machine_cores or cores)  # the load average counts every core of the machine
    load = load_average() if load is ... else load
    if threads is None and _pinned_threads is not None:
        threads = _pinned_threads
    if threads is None:
        threads = default_threads(cores, load, parallel_jobs, machine_cores)
        omp = os.environ.get("OMP_NUM_THREADS", "")
        if omp.isdigit() and int(omp) > 0:  # the user's (or the cluster's) limit for this process
            threads = min(threads, int(omp))
    # the jobs of a parallel sweep count in the load average: each job judges its own threads
    if oversubscribed(threads, load, machine_cores):
        logging.getLogger("nnopt").warning(
            "the CPU is busy (load average %.1f on %d cores) and this run uses %d threads: its epochs may "
            "take many times longer; pass threads=1", load, machine_cores, threads)
    import torch

    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic (see torch's reproducibility notes)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.are_deterministic_algorithms_enabled():
        # only when an earlier run of this process switched it on: the call imports a large part
        # of torch that training never uses (1.3 s of a short run's start-up)
        torch.use_deterministic_algorithms(False)
