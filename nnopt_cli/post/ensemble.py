"""An ensemble of trained models: the average of their softmax outputs (a distillation teacher of
several runs, and what `nnopt fuse` measures a model soup against)."""

from __future__ import annotations

import torch
from torch import nn


def mean_softmax(logits: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """The average of softmax(logits_i / T) over the members (probabilities, float32)."""
    return torch.stack([torch.softmax(z.float() / temperature, dim=1) for z in logits]).mean(0)


class Ensemble(nn.Module):
    """Several models as one: forward returns log of the mean of their softmaxes, so evaluate()'s
    argmax is the ensemble's prediction and its cross-entropy is the ensemble's log loss."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def probs(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return mean_softmax([m(x) for m in self.members], temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probs(x).clamp_min(torch.finfo(torch.float32).tiny).log()
