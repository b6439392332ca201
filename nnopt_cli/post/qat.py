"""Quantization-aware training: torchao's for 2..8 bits, nnopt's own binarization for 1 bit.

2..8 bits (torchao.quantization.qat, QATConfig):
    prepare  QATConfig(base, step="prepare"): each Linear becomes a FakeQuantizedLinear whose
             forward uses its weight snapped to the `bits`-bit grid of `base`
             (IntxWeightOnlyConfig: symmetric, one scale per output unit); gradients pass
             through the rounding unchanged (straight-through estimator)
    train    the run's optimizer fine-tunes the float weights under that rounding (nnopt's Trainer)
    convert  QATConfig(base, step="convert"): back to plain Linears, then `base` quantizes them:
             the converted model computes what the fake-quantized one did
    Conv layers stay float (torchao's QAT covers Linear and Embedding).

1 bit (torchao has no 1-bit weight config, so nnopt does it, fake_quant.py):
    prepare  each Linear and Conv2d weight gets a parametrization (torch.nn.utils.parametrize) whose
             forward is sign(w) * c (the stage's scale rule, per tensor or per output unit) and whose
             backward is BinaryConnect's straight-through estimator (the gradient where |w| <= 1)
    train    as above: the optimizer updates the real-valued weights
    convert  the parametrization removed, each weight left at its binarized value: a float model
             whose weights hold two values per scale group (like method=fake)
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnopt_cli.post.fake_quant import LAYERS, Binarized, Rule
from nnopt_cli.post.torchao_api import import_torchao, intx_weight_config


def prepare(model: nn.Module, rule: Rule) -> nn.Module:
    """A copy of `model` with fake-quantized weights, on the model's device, ready to train."""
    model = copy.deepcopy(model)
    if rule.bits == 1:
        for m in model.modules():
            if isinstance(m, LAYERS):
                parametrize.register_parametrization(m, "weight", Binarized(rule))
        return model
    import_torchao()
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(intx_weight_config(rule.bits), step="prepare"))
    return model


def convert(prepared: nn.Module, rule: Rule, like: nn.Module | None = None) -> nn.Module:
    """The quantized model of a prepared, trained model: on the CPU (torchao's int kernels), or for
    1 bit a float model on the training device (a copy of `like`, the model before `prepare`, with
    the binarized weights)."""
    if rule.bits == 1:
        return _unparametrized(prepared, like, binarized=True)
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    model = copy.deepcopy(prepared).cpu().eval()
    quantize_(model, QATConfig(intx_weight_config(rule.bits), step="convert"))
    return model


def real_valued(prepared: nn.Module, like: nn.Module) -> nn.Module:
    """A copy of `like` with a 1-bit prepared model's real-valued (trained, not binarized) weights."""
    return _unparametrized(prepared, like, binarized=False)


@torch.no_grad()
def _unparametrized(prepared: nn.Module, like: nn.Module, binarized: bool) -> nn.Module:
    # a copy of the plain model, loaded with the prepared one's state: torch cannot remove a
    # parametrization from a deep copy of a parametrized module (the copies share its generated class)
    state = {k.replace("parametrizations.weight.original", "weight"): v for k, v in prepared.state_dict().items()}
    if binarized:
        for name, m in prepared.named_modules():
            if parametrize.is_parametrized(m, "weight"):
                state[f"{name}.weight" if name else "weight"] = m.weight.detach()
    model = copy.deepcopy(like)
    model.load_state_dict(state)
    return model.eval()


def quantization_aware_training(model: nn.Module, rule: Rule, fit: Callable[[nn.Module], None]
                                ) -> tuple[nn.Module, nn.Module]:
    """(the prepared model after `fit` trained it, the converted quantized model)."""
    prepared = prepare(model, rule)
    fit(prepared)
    return prepared, convert(prepared, rule, like=model)
