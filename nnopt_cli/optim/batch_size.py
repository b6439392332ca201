"""Batch-size policies (conf/batch_size/*.yaml) and LR scaling with the batch size.

Every policy answers one question up front: which batch sizes does epoch e use? Knowing the
whole schedule before training lets per-step LR schedules (OneCycle, warm-up) get the exact
number of steps, and makes `random` reproducible from the seed.

Gradient accumulation (`accumulate=k`): every size a policy gives is that of a micro-batch; an
optimizer step takes k of them, so the sizes listed here (one per optimizer step) are k times the
policy's, drawn from the same permutation as one big batch, and the trainer splits each step's
batch into its k micro-batches.
"""

from __future__ import annotations

import contextlib
import math

from nnopt_cli.config.checks import need_choice, need_int, need_num
from nnopt_cli.errors import ConfigError

_NO_SCALING = contextlib.nullcontext()

POLICIES = ("fixed", "ramp", "double", "random")
SAMPLERS = ("random", "balanced")  # training/sampler.py: every sample once per epoch, or class-balanced draws


MAX_BATCH = 2**31 - 1  # index tensors and sizes stay within int32


def check_batch_size(b: dict, scheduler: dict, batch_norm: bool = False) -> None:
    """batch_norm: BatchNorm cannot train on one sample, so every size is >= 2 (a one-sample last
    batch is folded into the one before: BatchSizePolicy.min_batch)."""
    least = 2 if batch_norm else 1
    need_choice("batch_size.policy", b.get("policy"), POLICIES)
    need_choice("batch_size.lr_scaling", b.get("lr_scaling"), ("none", "linear", "sqrt"))
    if b["policy"] in ("fixed", "double"):
        need_int("batch_size.size", b.get("size"), least, MAX_BATCH)
    if b["policy"] == "ramp":
        need_int("batch_size.start", b.get("start"), least, MAX_BATCH)
        need_int("batch_size.end", b.get("end"), least, MAX_BATCH)
    if b["policy"] == "double":
        need_int("batch_size.every", b.get("every"), 1)
        need_num("batch_size.factor", b.get("factor"), gt=1)
        need_int("batch_size.max_size", b.get("max_size"), b["size"], MAX_BATCH)
        if b.get("instead_of_lr_decay") and scheduler.get("name") not in ("step", "multistep"):
            raise ConfigError("batch_size.instead_of_lr_decay", True, "needs scheduler=step or scheduler=multistep "
                              f"to take the decay epochs from (got scheduler={scheduler.get('name')})")
    if b["policy"] == "random":
        need_int("batch_size.min_size", b.get("min_size"), least, MAX_BATCH)
        need_int("batch_size.max_size", b.get("max_size"), b["min_size"], MAX_BATCH)
    need_int("batch_size.base_size", b.get("base_size"), 1, MAX_BATCH)
    # the largest micro-batch the policy gives; an optimizer step takes `accumulate` of them
    largest = (max(b["start"], b["end"]) if b["policy"] == "ramp" else
               b["max_size"] if b["policy"] in ("double", "random") else b["size"])
    need_int("batch_size.accumulate", b.get("accumulate", 1), 1, MAX_BATCH // largest)
    need_choice("batch_size.sampler", b.get("sampler", "random"), SAMPLERS)


class BatchSizePolicy:
    def __init__(self, policy: str, size: int, *, epochs: int, seed: int = 0, start: int | None = None,
                 end: int | None = None, every: int = 1, factor: float = 2.0, max_size: int | None = None,
                 min_size: int | None = None, growth_epochs: list[int] | None = None,
                 lr_scaling: str = "none", base_size: int | None = None, min_batch: int = 1, accumulate: int = 1):
        self.policy, self.size, self.epochs, self.seed = policy, size, epochs, seed
        self.start, self.end = start, end
        self.every, self.factor, self.max_size, self.min_size = every, factor, max_size, min_size
        # explicit growth epochs (used when batch growth replaces a step LR decay)
        self.growth_epochs = sorted(growth_epochs) if growth_epochs else None
        self.lr_scaling = lr_scaling
        self.base_size = base_size or size
        # the smallest batch a step may get: a shorter last batch joins the one before it
        # (BatchNorm needs 2 samples to train; 1 keeps every batch as it always was)
        self.min_batch = min_batch
        self.accumulate = accumulate  # micro-batches per optimizer step

    @classmethod
    def from_config(cls, b: dict, scheduler: dict, epochs: int, seed: int, min_batch: int = 1) -> BatchSizePolicy:
        """min_batch: 2 for a model with batch norm (see __init__)."""
        growth = None
        if b["policy"] == "double" and b.get("instead_of_lr_decay"):
            # Smith et al. 2018: grow the batch at the epochs where the step schedule would decay the LR
            growth = list(scheduler["milestones"]) if scheduler["name"] == "multistep" else list(
                range(scheduler["step_size"], epochs, scheduler["step_size"]))
        return cls(
            b["policy"], b.get("size"), epochs=epochs, seed=seed, start=b.get("start"), end=b.get("end"),
            every=b.get("every", 1), factor=(1 / scheduler["gamma"]) if growth is not None else b.get("factor", 2.0),
            max_size=b.get("max_size"), min_size=b.get("min_size"), growth_epochs=growth,
            lr_scaling=b["lr_scaling"], base_size=b["base_size"], min_batch=min_batch,
            accumulate=b.get("accumulate", 1),
        )

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
            if self.max_size and grows * math.log(self.factor) >= math.log(self.max_size / self.size):
                return self.max_size  # also keeps factor**grows from overflowing a float
            size = int(round(self.size * self.factor**grows))
            return min(size, self.max_size) if self.max_size else size
        raise ValueError(f"policy {self.policy!r} has no single size per epoch")

    def epoch_sizes(self, epoch: int, n: int) -> list[int]:
        """The batch sizes of every optimizer step of epoch `epoch` over `n` samples (the last may be
        short): `accumulate` micro-batches of the policy's size each."""
        k = getattr(self, "accumulate", 1)  # a checkpoint written before accumulation had no such key
        if self.policy == "random":
            import numpy as np  # here: the config checks in this module run before numpy and torch load

            rng = np.random.default_rng([self.seed, epoch])
            sizes, left = [], n
            while left > 0:
                b = int(rng.integers(self.min_size, self.max_size + 1)) * k
                sizes.append(min(b, left))
                left -= b
        else:
            b = self.epoch_size(epoch) * k
            full, rest = divmod(n, b)
            sizes = [b] * full + ([rest] if rest else [])
        if len(sizes) > 1 and sizes[-1] < getattr(self, "min_batch", 1):
            last = sizes.pop()
            sizes[-1] += last
        return sizes

    def total_steps(self, n: int) -> int:
        """Optimizer steps of the whole run (per-step LR schedules need it up front); epochs with
        the same batch size are counted once, so epochs=10**6 with a fixed size costs nothing."""
        if self.policy == "random":
            return sum(len(self.epoch_sizes(e, n)) for e in range(self.epochs))
        if self.policy == "fixed":
            return len(self.epoch_sizes(0, n)) * self.epochs
        steps: dict[int, int] = {}  # batch size -> steps of an epoch at that size
        total = 0
        for e in range(self.epochs):
            b = self.epoch_size(e)
            if b not in steps:
                steps[b] = len(self.epoch_sizes(e, n))
            total += steps[b]
        return total

    def lr_factor(self, batch_size: int) -> float:
        """How much to scale the LR for this batch size: none, linear (Goyal et al.) or sqrt."""
        if self.lr_scaling == "none":
            return 1.0
        ratio = batch_size / self.base_size
        return ratio if self.lr_scaling == "linear" else math.sqrt(ratio)

    def scaled_lr(self, optimizer, batch_size: int):
        """Scale the LR for one step of `batch_size`, so the scheduler's own state is untouched."""
        if self.lr_scaling == "none":
            return _NO_SCALING  # the common step: no generator-based context manager to set up
        return self._scaled_lr(optimizer, self.lr_factor(batch_size))

    @contextlib.contextmanager
    def _scaled_lr(self, optimizer, factor: float):
        if factor == 1.0:
            yield
            return
        groups = optimizer.param_groups
        for g in groups:
            g["lr"] = g["lr"] * factor
        try:
            yield
        finally:
            for g in groups:
                g["lr"] = g["lr"] / factor

    def epoch_lr(self, base_lr: float, sizes: list[int]) -> float:
        """The LR an epoch's steps used: the scheduled LR times the LR factor (averaged over the steps
        when their sizes differ), as metrics.jsonl records it."""
        if self.lr_scaling == "none":
            return base_lr
        return base_lr * sum(self.lr_factor(b) for b in sizes) / len(sizes)
