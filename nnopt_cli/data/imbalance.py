"""Long-tailed training classes (`dataset.imbalance=<ratio>`), the exponential profile of the
long-tail literature (Cui et al. 2019, Cao et al. 2019): class c keeps

    n_max * ratio ** (-c / (C - 1))      samples (rounded down),

so class 0 keeps n_max and class C-1 keeps n_max / ratio: ratio = largest / smallest class.
n_max is the size of the smallest class of the training split before subsampling, the largest
count every class can supply, so the ratio holds exactly (MNIST's classes differ by up to 20%).

Only the training split is subsampled, after the validation split is carved as usual: validation
and test keep their natural (nearly even) classes, so their per-class metrics measure the tail.
"""

from __future__ import annotations

import math

import torch

from nnopt_cli.errors import ConfigError


def long_tail_counts(available: list[int], ratio: float) -> list[int]:
    """How many samples each class keeps, given how many each has."""
    classes = len(available)
    n_max = min(available)
    if classes < 2:
        return list(available)
    return [math.floor(n_max * ratio ** (-c / (classes - 1))) for c in range(classes)]


def subsample(labels: torch.Tensor, num_classes: int, ratio: float, seed: int, dataset: str) -> torch.Tensor:
    """Positions in `labels` to keep (in their order), each class drawn without replacement by a
    generator seeded with `seed`."""
    available = torch.bincount(labels.long(), minlength=num_classes).tolist()
    keep = long_tail_counts(available, ratio)
    if min(keep) < 1:
        raise ConfigError("dataset.imbalance", ratio, f"at most {min(available)} for dataset={dataset} "
                          f"(its smallest training class has {min(available)} samples; the rarest class "
                          "would keep none)")
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c, k in enumerate(keep):
        members = torch.nonzero(labels == c).flatten()
        mask[members[torch.randperm(len(members), generator=g)[:k]]] = True
    return torch.nonzero(mask).flatten()
