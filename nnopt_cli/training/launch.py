"""How this process was started: torchrun's environment (WORLD_SIZE, LOCAL_RANK), read without
importing torch, so that `nnopt train` checks its config before torch is loaded. The process
group itself is distributed.py's."""

from __future__ import annotations

import os


def launched_by_torchrun() -> bool:
    """True in a process that torchrun started as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
