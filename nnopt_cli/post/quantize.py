"""Post-training quantization: int8 on two engines for CPU inference, lower bit widths, QAT.

eager    torch.ao.quantization (eager mode): int8 kernels (fbgemm/x86) for dynamic and static
         quantization. Deprecated upstream in favour of torchao, still the fastest eager path here.
torchao  torchao.quantization.quantize_ (the maintained successor): int8 dynamic-activation and
         int8 / intN weight-only configs on Linear layers (tensor subclasses, no module swap).

dynamic      int8 weights, activations quantized on the fly per batch; Linear layers
static       int8 weights and activations, activation ranges calibrated on training batches;
             Linear and Conv layers (conv+bn+relu and linear+relu fused first); eager only
weight_only  `bits`-bit weights, dequantized for a float matmul; Linear layers; torchao only.
             bits=8: Int8WeightOnlyConfig. bits<8: IntxWeightOnlyConfig(torch.int<bits>), the CPU
             path (Int4WeightOnlyConfig needs CUDA kernels: tinygemm / mslk); its values are
             stored one per int8 byte, so the file is int8-sized (size_packed_bytes: b bits each)
fake         `bits`-bit weights simulated in float (fake_quant.py): any width 2..8, per tensor
             or per channel, Linear and Conv layers; for the accuracy-vs-bits curve
qat          quantization-aware training (qat.py): torchao fake-quantizes the Linear weights to
             `bits` bits, the run's optimizer fine-tunes `finetune_epochs`, then it converts
             to the weight_only model of the same bits
granularity  per_tensor: one scale per weight tensor; per_channel: one per output unit
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from nnopt_cli.checks import need_choice, need_int, need_num
from nnopt_cli.errors import ConfigError

METHODS = ("dynamic", "static", "weight_only", "fake", "qat")
BACKENDS = ("eager", "torchao")
GRANULARITIES = ("per_tensor", "per_channel")
# which layer types each method turns into int8
QUANTIZABLE = {"dynamic": (nn.Linear,), "static": (nn.Linear, nn.Conv2d), "weight_only": (nn.Linear,),
               "fake": (nn.Linear, nn.Conv2d), "qat": (nn.Linear,)}
# torchao's symmetric intN mapping (choose_qparams_affine), for weight_only and qat
TORCHAO_SCALE_RULE = ("symmetric: scale = max|w| / ((2^b - 1) / 2) per output unit, w' = clamp(round(w / scale), "
                      "-2^(b-1), 2^(b-1)-1) * scale (torchao MappingType.SYMMETRIC)")
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
    """Why `method` cannot run on `backend`, or None when it can (fake uses neither engine)."""
    if method == "weight_only" and backend == "eager":
        return "weight_only needs quantize.backend=torchao (torch.ao has no int8 weight-only Linear)"
    if method == "static" and backend == "torchao":
        return "static needs quantize.backend=eager (nnopt uses torch.ao's calibrated int8 kernels for it)"
    if method == "qat" and backend == "eager":
        return "qat needs quantize.backend=torchao (nnopt uses torchao.quantization.qat)"
    return None


def check(s: dict, activation: str) -> None:
    """Validate the post.quantize node (ConfigError on the first problem); the model check that
    needs a built model is `quantizable_layers`."""
    need_choice("post.quantize.method", s["method"], METHODS)
    need_choice("post.quantize.backend", s["backend"], BACKENDS)
    need_choice("post.quantize.granularity", s["granularity"], GRANULARITIES)
    need_int("post.quantize.calibration_batches", s["calibration_batches"], 1)
    need_int("post.quantize.calibration_batch_size", s["calibration_batch_size"], 1)
    bits, method = s.get("bits", 8), s["method"]
    need_int("post.quantize.bits", bits, 2, 8)
    need_int("post.quantize.finetune_epochs", s.get("finetune_epochs", 1), 1)
    need_num("post.quantize.lr_scale", s.get("lr_scale", 1.0), gt=0)
    reason = check_combination(method, s["backend"])
    if reason:
        raise ConfigError("post.quantize.method", method, reason)
    if bits != 8 and method in ("dynamic", "static"):
        raise ConfigError("post.quantize.bits", bits, f"8 with method={method} (int8 kernels); below 8 bits: "
                          "method=weight_only or qat (torchao) or fake (simulated)")
    if s["granularity"] == "per_tensor" and (method == "qat" or (method == "weight_only" and bits < 8)):
        raise ConfigError("post.quantize.granularity", "per_tensor", f"per_channel for method={method} with "
                          f"bits={bits} (torchao's IntxWeightOnlyConfig has no per-tensor scale)")
    if method == "static" and activation not in STATIC_ACTIVATIONS:
        raise ConfigError("activation.name", activation, "with post.quantize.method=static one of "
                          + ", ".join(STATIC_ACTIVATIONS) + " (no int8 CPU kernel for it)")
    if s["backend"] == "torchao" and method != "fake":
        try:
            import_torchao()
        except ImportError:
            raise ConfigError("post.quantize.backend", "torchao", "needs the torchao package (pip install torchao)") from None


def intx_weight_config(bits: int):
    """torchao's weight-only config for `bits` < 8 (per output unit, symmetric; runs on the CPU)."""
    import_torchao()
    from torchao.quantization import IntxWeightOnlyConfig, PerAxis

    return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=PerAxis(0))


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
                   calibration: Iterable[torch.Tensor] = (), bits: int = 8) -> nn.Module:
    """A quantized copy of `model` on the CPU (the input model is unchanged); dynamic, static and
    weight_only (fake: fake_quant.fake_quantize_model; qat: qat.py, which ends here).

    `calibration`: input batches the static method's observers see before conversion.
    """
    reason = check_combination(method, backend)
    if reason:
        raise ConfigError("post.quantize.method", method, reason)
    if method == "fake":
        raise ValueError("fake quantization keeps a float model: use fake_quant.fake_quantize_model")
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
        if method == "dynamic":
            config = Int8DynamicActivationInt8WeightConfig(granularity=gran)
        elif bits < 8 or method == "qat":  # qat converts with the config its fake quantizers simulated
            config = intx_weight_config(bits)
        else:
            config = Int8WeightOnlyConfig(granularity=gran)
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
                      input_shape: tuple[int, ...], bits: int = 8) -> nn.Module:
    """The same quantized structure as the quantize stage made, ready for `load_state_dict` of a
    saved `model.quantized.pt` (the calibration here is a placeholder: the loaded state replaces
    every scale and zero point). A fake-quantized model is a float model: returned as it is."""
    if method == "fake":
        return model
    return quantize_model(model, method, backend, granularity, calibration=[torch.randn(2, *input_shape)], bits=bits)
