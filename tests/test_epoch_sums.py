"""EpochSums: the epoch's train loss and correct count, against sums done by hand on fixed numbers."""

import torch

from nnopt_cli.metrics import EpochSums

LOGITS = torch.tensor([[2.0, 0.1, 0.3], [0.0, 1.5, 0.2], [0.1, 0.2, 0.9], [1.0, 3.0, 0.0], [0.5, 0.4, 0.3]])
LABELS = torch.tensor([0, 1, 0, 1, 2])  # argmax 0, 1, 2, 1, 0: three right
LOSSES = [torch.tensor(0.75), torch.tensor(1.5), torch.tensor(0.25, dtype=torch.float64)]
BATCHES = [(0, 2), (2, 4), (4, 5)]  # sizes 2, 2, 1


def _fill(sums: EpochSums, steps) -> None:
    for i in steps:
        lo, hi = BATCHES[i]
        sums.add_step(LOGITS[lo:hi], LABELS[lo:hi], LOSSES[i], hi - lo)


def test_loss_and_correct_match_a_hand_count():
    sums = EpochSums(torch.device("cpu"))
    _fill(sums, range(3))
    assert sums.loss.item() == 0.75 * 2 + 1.5 * 2 + 0.25 * 1  # 4.75, exact in float32
    assert sums.loss.dtype == torch.float32  # a float64 loss is summed as float32, like the others
    assert sums.correct().item() == 3
    assert sums.correct().item() == 3  # asking twice counts nothing twice


def test_counting_midway_and_resuming_from_a_cut_give_the_same_sums():
    whole = EpochSums(torch.device("cpu"))
    _fill(whole, range(3))
    first = EpochSums(torch.device("cpu"))
    _fill(first, range(1))
    assert first.correct().item() == 2  # the first batch: both right
    part = first.cut(epoch=1, step=1, order_state=torch.zeros(1), base_lr=0.1)
    rest = EpochSums.resumed(part, torch.device("cpu"))
    _fill(rest, range(1, 3))
    assert torch.equal(rest.loss, whole.loss)
    assert rest.correct().item() == whole.correct().item() == 3


def test_a_long_epoch_is_counted_in_parts_and_keeps_few_tensors():
    sums = EpochSums(torch.device("cpu"))
    steps = 2 * EpochSums.KEEP_STEPS + 5
    for i in range(steps):  # one sample a step, its label the argmax on every third step
        logits = torch.tensor([[0.0, 1.0]])
        sums.add_step(logits, torch.tensor([1 if i % 3 == 0 else 0]), torch.tensor(1.0), 1)
        assert len(sums._predicted) < EpochSums.KEEP_STEPS
    assert sums.correct().item() == len(range(0, steps, 3))
    assert sums.loss.item() == steps
