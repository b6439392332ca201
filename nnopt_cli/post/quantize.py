"""Post-training int8 quantization on two engines, for CPU inference.

eager    torch.ao.quantization (eager mode): int8 kernels (fbgemm/x86) for dynamic and static
         quantization. Deprecated upstream in favour of torchao, still the fastest eager path here.
torchao  torchao.quantization.quantize_ (the maintained successor): int8 dynamic-activation and
         int8 weight-only configs on Linear layers (tensor subclasses, no module swap).

dynamic      int8 weights, activations quantized on the fly per batch; Linear layers
static       int8 weights and activations, activation ranges calibrated on training batches;
             Linear and Conv layers (conv+bn+relu and linear+relu fused first); eager only
weight_only  int8 weights, dequantized for a float matmul; Linear layers; torchao only
granularity  per_tensor: one scale per weight tensor; per_channel: one per output unit
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from nnopt_cli.errors import ConfigError

METHODS = ("dynamic", "static", "weight_only")
BACKENDS = ("eager", "torchao")
GRANULARITIES = ("per_tensor", "per_channel")
# which layer types each method turns into int8
QUANTIZABLE = {"dynamic": (nn.Linear,), "static": (nn.Linear, nn.Conv2d), "weight_only": (nn.Linear,)}
# activations with an int8 CPU kernel (static quantization runs them on quantized tensors)
STATIC_ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh")
# sequences fused before static quantization (torch.ao.quantization.fuse_modules)
FUSE_PATTERNS = ((nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv2d, nn.ReLU),
                 (nn.Linear, nn.BatchNorm1d), (nn.Linear, nn.ReLU))


def import_torchao():
    """Import torchao (ImportError if missing) without the warning torch logs when torchao registers
    an Enum with its pytree."""
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    import torchao

    return torchao


def check_combination(method: str, backend: str) -> str | None:
    """Why `method` cannot run on `backend`, or None when it can."""
    if method == "weight_only" and backend == "eager":
        return "weight_only needs quantize.backend=torchao (torch.ao has no int8 weight-only Linear)"
    if method == "static" and backend == "torchao":
        return "static needs quantize.backend=eager (nnopt uses torch.ao's calibrated int8 kernels for it)"
    return None


def quantizable_layers(model: nn.Module, method: str) -> int:
    return sum(isinstance(m, QUANTIZABLE[method]) for m in model.modules())


def _fuse_groups(model: nn.Sequential) -> list[list[str]]:
    mods, groups, i = list(model), [], 0
    while i < len(mods):
        for pattern in FUSE_PATTERNS:
            window = mods[i:i + len(pattern)]
            if len(window) == len(pattern) and all(type(m) is t for m, t in zip(window, pattern, strict=True)):
                groups.append([str(j) for j in range(i, i + len(pattern))])
                i += len(pattern) - 1
                break
        i += 1
    return groups


def _eager_prepare_static(model: nn.Module, granularity: str) -> nn.Module:
    import torch.ao.quantization as tq

    model.eval()
    if isinstance(model, nn.Sequential) and (groups := _fuse_groups(model)):
        model = tq.fuse_modules(model, groups)
    wrapped = tq.QuantWrapper(model).eval()  # quantize the input, dequantize the logits
    weight = tq.default_per_channel_weight_observer if granularity == "per_channel" else tq.default_weight_observer
    # reduce_range keeps x86 int8 kernels exact on CPUs without VNNI
    wrapped.qconfig = tq.QConfig(activation=tq.HistogramObserver.with_args(reduce_range=True), weight=weight)
    return tq.prepare(wrapped)


def quantize_model(model: nn.Module, method: str, backend: str, granularity: str,
                   calibration: Iterable[torch.Tensor] = ()) -> nn.Module:
    """An int8 copy of `model` on the CPU (the input model is unchanged).

    `calibration`: input batches the static method's observers see before conversion.
    """
    reason = check_combination(method, backend)
    if reason:
        raise ConfigError("post.quantize.method", method, reason)
    if quantizable_layers(model, method) == 0:
        kinds = " or ".join(t.__name__ for t in QUANTIZABLE[method])
        raise ConfigError("post.quantize.method", method, f"the model has no {kinds} layers to quantize")
    model = copy.deepcopy(model).cpu().eval()
    if backend == "torchao":
        import_torchao()
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            PerRow,
            PerTensor,
            quantize_,
        )

        gran = PerRow() if granularity == "per_channel" else PerTensor()
        config = (Int8DynamicActivationInt8WeightConfig(granularity=gran) if method == "dynamic"
                  else Int8WeightOnlyConfig(granularity=gran))
        quantize_(model, config)
        return model
    with warnings.catch_warnings():  # torch.ao.quantization warns on every call that it is deprecated
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return _eager_quantize(model, method, granularity, calibration)


def _eager_quantize(model: nn.Module, method: str, granularity: str,
                    calibration: Iterable[torch.Tensor]) -> nn.Module:
    import torch.ao.quantization as tq

    if method == "dynamic":
        qconfig = tq.per_channel_dynamic_qconfig if granularity == "per_channel" else tq.default_dynamic_qconfig
        return tq.quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8)
    prepared = _eager_prepare_static(model, granularity)
    seen = 0
    with torch.no_grad():
        for x in calibration:
            prepared(x.cpu())
            seen += 1
    if seen == 0:
        raise ValueError("static quantization needs at least one calibration batch")
    return tq.convert(prepared)


def rebuild_quantized(model: nn.Module, method: str, backend: str, granularity: str,
                      input_shape: tuple[int, ...]) -> nn.Module:
    """The same quantized structure as `quantize_model` made, ready for `load_state_dict` of a
    saved `model.quantized.pt` (the calibration here is a placeholder: the loaded state replaces
    every scale and zero point)."""
    return quantize_model(model, method, backend, granularity, calibration=[torch.randn(2, *input_shape)])
