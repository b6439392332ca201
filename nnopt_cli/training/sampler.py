"""`batch_size.sampler`: which training samples an epoch visits.

random: every sample once per epoch, in a fresh order (distributed.epoch_batches).
balanced: as many draws as samples, each with replacement and with probability 1 / n_c for a
sample of class c (torch's WeightedRandomSampler), so every class is drawn about equally often
whatever its size; the epoch keeps its length, the batches are formed from the draws.
"""

from __future__ import annotations

import torch
from torch.utils.data import WeightedRandomSampler


class BalancedSampler:
    """Draws an epoch's samples with class-balanced probabilities from the trainer's generator, so a
    resumed epoch draws the same ones."""

    def __init__(self, labels: torch.Tensor):
        counts = torch.bincount(labels)
        self.weights = (1.0 / counts.double())[labels]  # every class's samples sum to 1

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """The indices of one epoch's samples, on the labels' device."""
        sampler = WeightedRandomSampler(self.weights, len(self.weights), replacement=True, generator=generator)
        return torch.tensor(list(sampler), dtype=torch.long, device=self.weights.device)
