"""Forward FLOPs per sample, counted by torch's own flop counter (torch.utils.flop_counter).

The counter counts the matrix products and convolutions torch dispatches: 2 * in * out per
sample for a Linear, 2 * out_h * out_w * out_c * in_c/groups * k_h * k_w for a Conv2d (one
multiply and one add per weight use). Bias adds, activations, normalization and pooling are
not counted (torch counts none of them), so FLOPs = 2 x MACs of the weight layers.

It counts dense operations: zeros left by unstructured pruning inside dense tensors cost the
same FLOPs (only a compacted model is cheaper), and int8 kernels of torch.ao / torchao dynamic
quantization are invisible to it (they count 0; the quantize stage records the float model's
count for them instead, since quantization changes the number type, not the operations).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of `model` on one sample of `input_shape` (no batch dimension).

    The model runs in eval mode (BatchNorm cannot run a batch of one in train mode) on the
    device and dtype of its first parameter or buffer; its train/eval flag is restored.
    """
    ref = next(iter([*model.parameters(), *model.buffers()]), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
