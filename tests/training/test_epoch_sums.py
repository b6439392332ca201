"""EpochSums: the epoch's train loss and correct count, against sums done by hand on fixed numbers."""

import math

import pytest
import torch

from nnopt_cli.training.metrics import EpochSums

LOGITS = torch.tensor([[2.0, 0.1, 0.3], [0.0, 1.5, 0.2], [0.1, 0.2, 0.9], [1.0, 3.0, 0.0], [0.5, 0.4, 0.3]])
LABELS = torch.tensor([0, 1, 0, 1, 2])  # argmax 0, 1, 2, 1, 0: three right
LOSSES = [torch.tensor(0.75), torch.tensor(1.5), torch.tensor(0.25, dtype=torch.float64)]
BATCHES = [(0, 2), (2, 4), (4, 5)]  # sizes 2, 2, 1
CPU = torch.device("cpu")


def _fill(sums: EpochSums, steps) -> None:
    for i in steps:
        lo, hi = BATCHES[i]
        sums.add_step(LOGITS[lo:hi], LABELS[lo:hi], LOSSES[i], hi - lo)


def test_loss_and_correct_match_a_hand_count():
    sums = EpochSums(CPU)
    _fill(sums, range(3))
    assert sums.loss_sum().item() == 0.75 * 2 + 1.5 * 2 + 0.25 * 1  # 4.75
    assert sums.loss_sum().dtype == torch.float64
    assert sums.correct().item() == 3
    assert sums.correct().item() == 3  # asking twice counts nothing twice
    assert sums.loss_sum().item() == 4.75  # nor sums twice


# 11 steps of losses 16 orders of magnitude apart and uneven shares: a sum whose grouping shows in its bits
STEPS = [(torch.tensor((1e8 if i % 2 else 1e-8) * (1 + i / 7)), 7 + (i % 3)) for i in range(11)]


def _steps(sums: EpochSums, lo: int, hi: int, peek: bool = False) -> None:
    for i in range(lo, hi):
        loss, share = STEPS[i]
        sums.add_step(LOGITS[i % 5:i % 5 + 1], LABELS[i % 5:i % 5 + 1], loss, share)
        if peek:  # what a live progress line asks for: must not change how the epoch is summed
            sums.loss_sum(), sums.correct()


@pytest.mark.parametrize("cut_at", [2, 4, 6, 9])
def test_a_cut_and_resumed_epoch_sums_to_the_same_bits(monkeypatch, cut_at):
    monkeypatch.setattr(EpochSums, "KEEP_STEPS", 4)  # folds after steps 4 and 8: cuts before, at and after
    whole = EpochSums(CPU)
    _steps(whole, 0, 11)
    first = EpochSums(CPU)
    _steps(first, 0, cut_at, peek=True)
    part = first.cut(epoch=1, step=cut_at, order_state=torch.zeros(1), base_lr=0.1)
    rest = EpochSums.resumed(part, CPU)
    _steps(rest, cut_at, 11, peek=True)
    assert rest.loss_sum().item() == whole.loss_sum().item()  # every bit
    assert rest.correct().item() == whole.correct().item() == sum(1 for i in range(11) if i % 5 in (0, 1, 3))
    # and the sum itself, against an exactly rounded one
    assert whole.loss_sum().item() == pytest.approx(math.fsum(float(v) * s for v, s in STEPS), rel=1e-15)


def test_a_checkpoint_without_kept_losses_resumes_from_its_loss_sum():
    """Checkpoints of nnopt before the losses were kept hold the sum so far, float32."""
    part = {"loss_sum": torch.tensor(3.0), "reg_sum": torch.tensor(0.0), "correct": torch.tensor(2),
            "grad_norms": torch.zeros(0)}
    rest = EpochSums.resumed(part, CPU)
    _fill(rest, range(1, 3))
    assert rest.loss_sum().item() == 3.0 + 1.5 * 2 + 0.25 * 1
    assert rest.correct().item() == 2 + 1


def test_a_long_epoch_is_summed_in_parts_and_keeps_few_tensors(monkeypatch):
    monkeypatch.setattr(EpochSums, "KEEP_ELEMENTS", 10)  # logits counted every 5 steps of 2 numbers
    sums = EpochSums(CPU)
    steps = 2 * EpochSums.KEEP_STEPS + 5
    for i in range(steps):  # one sample a step, its label the argmax on every third step
        logits = torch.tensor([[0.0, 1.0]])
        sums.add_step(logits, torch.tensor([1 if i % 3 == 0 else 0]), torch.tensor(1.0), 1)
        assert len(sums._losses) < EpochSums.KEEP_STEPS and len(sums._logits) < 5
    assert sums.correct().item() == len(range(0, steps, 3))
    assert sums.loss_sum().item() == steps
