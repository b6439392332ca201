"""Batch-size policies (conf/batch_size/*.yaml) and LR scaling with the batch size.

Every policy answers one question up front: which batch sizes does epoch e use? Knowing the
whole schedule before training lets per-step LR schedules (OneCycle, warm-up) get the exact
number of steps, and makes `random` reproducible from the seed.
"""

from __future__ import annotations

import math

import numpy as np

POLICIES = ("fixed", "ramp", "double", "random")


class BatchSizePolicy:
    def __init__(self, policy: str, size: int, *, epochs: int, seed: int = 0, start: int | None = None,
                 end: int | None = None, every: int = 1, factor: float = 2.0, max_size: int | None = None,
                 min_size: int | None = None, growth_epochs: list[int] | None = None,
                 lr_scaling: str = "none", base_size: int | None = None):
        self.policy, self.size, self.epochs, self.seed = policy, size, epochs, seed
        self.start, self.end = start, end
        self.every, self.factor, self.max_size, self.min_size = every, factor, max_size, min_size
        # explicit growth epochs (used when batch growth replaces a step LR decay)
        self.growth_epochs = sorted(growth_epochs) if growth_epochs else None
        self.lr_scaling = lr_scaling
        self.base_size = base_size or size

    def epoch_size(self, epoch: int) -> int:
        """Batch size of epoch `epoch` (0-based) for the epoch-level policies."""
        if self.policy == "fixed":
            return self.size
        if self.policy == "ramp":
            # linear from start to end over the run, in whole samples
            span = max(self.epochs - 1, 1)
            return int(round(self.start + (self.end - self.start) * min(epoch, span) / span))
        if self.policy == "double":
            if self.growth_epochs is not None:
                grows = sum(1 for m in self.growth_epochs if m <= epoch)
            else:
                grows = epoch // self.every
            size = int(round(self.size * self.factor**grows))
            return min(size, self.max_size) if self.max_size else size
        raise ValueError(f"policy {self.policy!r} has no single size per epoch")

    def epoch_sizes(self, epoch: int, n: int) -> list[int]:
        """The batch sizes of every step of epoch `epoch` over `n` samples (the last may be short)."""
        if self.policy == "random":
            rng = np.random.default_rng([self.seed, epoch])
            sizes, left = [], n
            while left > 0:
                b = int(rng.integers(self.min_size, self.max_size + 1))
                sizes.append(min(b, left))
                left -= b
            return sizes
        b = self.epoch_size(epoch)
        full, rest = divmod(n, b)
        return [b] * full + ([rest] if rest else [])

    def total_steps(self, n: int) -> int:
        return sum(len(self.epoch_sizes(e, n)) for e in range(self.epochs))

    def lr_factor(self, batch_size: int) -> float:
        """How much to scale the LR for this batch size: none, linear (Goyal et al.) or sqrt."""
        if self.lr_scaling == "none":
            return 1.0
        ratio = batch_size / self.base_size
        return ratio if self.lr_scaling == "linear" else math.sqrt(ratio)
