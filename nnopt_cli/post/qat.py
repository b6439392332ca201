"""Quantization-aware training with torchao (torchao.quantization.qat, QATConfig).

    prepare  QATConfig(base, step="prepare"): each Linear becomes a FakeQuantizedLinear whose
             forward uses its weight snapped to the `bits`-bit grid of `base`
             (IntxWeightOnlyConfig: symmetric, one scale per output unit); gradients pass
             through the rounding unchanged (straight-through estimator)
    train    the run's optimizer fine-tunes the float weights under that rounding (nnopt's Trainer)
    convert  QATConfig(base, step="convert"): back to plain Linears, then `base` quantizes them:
             the converted model computes what the fake-quantized one did

Conv layers stay float (torchao's QAT covers Linear and Embedding).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

from nnopt_cli.post.torchao_api import import_torchao, intx_weight_config


def prepare(model: nn.Module, bits: int) -> nn.Module:
    """A copy of `model` with fake-quantized Linear weights, on the model's device, ready to train."""
    import_torchao()
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    model = copy.deepcopy(model)
    quantize_(model, QATConfig(intx_weight_config(bits), step="prepare"))
    return model


def convert(prepared: nn.Module, bits: int) -> nn.Module:
    """The real `bits`-bit weight-only model (on the CPU) of a prepared, trained model."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    model = copy.deepcopy(prepared).cpu().eval()
    quantize_(model, QATConfig(intx_weight_config(bits), step="convert"))
    return model


def quantization_aware_training(model: nn.Module, bits: int, fit: Callable[[nn.Module], None]
                                ) -> tuple[nn.Module, nn.Module]:
    """(the prepared model after `fit` trained it, the converted quantized model)."""
    prepared = prepare(model, bits)
    fit(prepared)
    return prepared, convert(prepared, bits)
