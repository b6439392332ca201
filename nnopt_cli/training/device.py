"""Where a run executes: device choice, CPU threads, seeding and determinism."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from nnopt_cli.errors import ConfigError


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def resolve_device(spec: str) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps -> torch.device, refusing devices this machine does not have.
    auto picks CUDA when there is one, else the CPU (MPS only when asked for: some ops lack kernels)."""
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
        import logging

        logging.getLogger("nnopt").warning("the run used %d threads; this machine allows at most %d, so a "
                                           "resumed run may not match bit for bit", threads, _pinned_threads)


def configure_threads(threads: int | None, parallel_jobs: int = 1) -> int:
    """Set torch's intra-op threads; with N parallel jobs on this machine, jobs x threads <= cores."""
    if threads is None and _pinned_threads is not None:
        threads = _pinned_threads
    if threads is None:
        threads = max(1, available_cores() // max(1, parallel_jobs)) if parallel_jobs > 1 else torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int, deterministic: bool = False) -> None:
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
