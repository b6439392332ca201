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
fake         `bits`-bit weights simulated in float (fake_quant.py): any width 1..8 (1: binary),
             per tensor or per channel, Linear and Conv layers, any scale rule and scheme; for the
             accuracy-vs-bits curve
qat          quantization-aware training (qat.py): torchao fake-quantizes the Linear weights to
             `bits` bits, the run's optimizer fine-tunes `finetune_epochs`, then it converts
             to the weight_only model of the same bits; bits=1: nnopt's own binarization (torchao
             has no 1-bit config) of Linear and Conv weights, a float model at the end
granularity  per_tensor: one scale per weight tensor; per_channel: one per output unit
scale        how a group's clipping range is chosen (max | mean | percentile | mse, fake_quant.py);
             torch.ao and torchao choose theirs by max|w|, so only fake and 1-bit qat take others
scheme       symmetric (zero at the grid's centre) | asymmetric (unsigned range, zero point): fake,
             and weight_only through torchao's MappingType.ASYMMETRIC
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from nnopt_cli import data as datasets
from nnopt_cli.config.stages import check_combination
from nnopt_cli.errors import ConfigError
from nnopt_cli.models import make_model
from nnopt_cli.models.flops import forward_flops
from nnopt_cli.post import fake_quant as F
from nnopt_cli.post import qat
from nnopt_cli.post.stage import StageContext, StageResult
from nnopt_cli.post.torchao_api import import_torchao, intx_weight_config

OUTPUT_FILE = "model.quantized.pt"
# which layer types each method turns into int8
QUANTIZABLE = {"dynamic": (nn.Linear,), "static": (nn.Linear, nn.Conv2d), "weight_only": (nn.Linear,),
               "fake": (nn.Linear, nn.Conv2d), "qat": (nn.Linear,)}
# torchao's symmetric intN mapping (choose_qparams_affine), for weight_only and qat
TORCHAO_SCALE_RULE = ("symmetric: scale = max|w| / ((2^b - 1) / 2) per output unit, w' = clamp(round(w / scale), "
                      "-2^(b-1), 2^(b-1)-1) * scale (torchao MappingType.SYMMETRIC)")
TORCHAO_ASYMMETRIC_RULE = ("asymmetric: scale = (max(w) - min(w)) / (2^b - 1) per output unit, zero point "
                           "-2^(b-1) - round(min(w) / scale), w' = (clamp(round(w / scale) + zp, -2^(b-1), "
                           "2^(b-1)-1) - zp) * scale (torchao MappingType.ASYMMETRIC)")
# sequences fused before static quantization (torch.ao.quantization.fuse_modules)
FUSE_PATTERNS = ((nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv2d, nn.ReLU),
                 (nn.Linear, nn.BatchNorm1d), (nn.Linear, nn.ReLU))


def check(cfg: dict, model_cfg: dict) -> dict:
    """post.quantize against the engine installed and the model it will receive (built as a skeleton on the
    meta device); its values are checked by config/stages.py."""
    s = cfg["post"]["quantize"]
    if s["backend"] == "torchao" and s["method"] != "fake" and not (s["method"] == "qat" and s.get("bits", 8) == 1):
        try:
            import_torchao()
        except ImportError:
            raise ConfigError("post.quantize.backend", "torchao", "needs the torchao package (pip install torchao)") from None
    shape = datasets.input_shape(cfg["dataset"])
    if shape is None:  # your own data: its shape is known once loaded; the stage checks its model then
        return model_cfg
    with torch.device("meta"):
        skeleton = make_model({**cfg, "model": model_cfg}, shape, datasets.num_classes(cfg["dataset"]))
    if quantizable_layers(skeleton, s["method"]) == 0:
        kinds = " or ".join(t.__name__ for t in QUANTIZABLE[s["method"]])
        raise ConfigError("post.quantize.method", s["method"],
                          f"a model with {kinds} layers (model {model_cfg.get('name')} has none)")
    return model_cfg


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
                   calibration: Iterable[torch.Tensor] = (), bits: int = 8, scheme: str = "symmetric") -> nn.Module:
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
        elif bits < 8 or method == "qat" or scheme == "asymmetric":  # qat: the config its quantizers simulated
            config = intx_weight_config(bits, scheme)
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
                      input_shape: tuple[int, ...], bits: int = 8, scheme: str = "symmetric") -> nn.Module:
    """The same quantized structure as the quantize stage made, ready for `load_state_dict` of a
    saved `model.quantized.pt` (the calibration here is a placeholder: the loaded state replaces
    every scale and zero point). A fake-quantized or 1-bit QAT model is a float model: returned as it is."""
    if method == "fake" or (method == "qat" and bits == 1):
        return model
    return quantize_model(model, method, backend, granularity, calibration=[torch.randn(2, *input_shape)], bits=bits,
                          scheme=scheme)


def dequantized_weight(m: nn.Module) -> torch.Tensor | None:
    """A layer's weight as float values, whichever engine quantized it (None: no weight)."""
    w = getattr(m, "weight", None)
    if callable(w) and not isinstance(w, torch.Tensor):  # torch.ao's quantized modules: weight()
        w = w()
    if not isinstance(w, torch.Tensor):
        return None
    return w.dequantize().float() if (w.is_quantized or hasattr(w, "qdata")) else w.detach().float()


def layer_errors(reference: nn.Module, quantized: nn.Module) -> dict[str, dict[str, float]]:
    """Per quantizable layer (by name), the reconstruction error of its quantized weight against the
    float weight it was made from (layers whose names changed, as static's fused ones, are left out)."""
    ref = dict(reference.named_modules())
    out = {}
    for name, m in quantized.named_modules():
        if not name or name not in ref or not isinstance(ref[name], F.LAYERS):
            continue
        w = dequantized_weight(m)
        if w is not None and w.shape == ref[name].weight.shape:
            out[name] = F.reconstruction_error(ref[name].weight.cpu(), w.cpu())
    return out


def run(ctx: StageContext, model: nn.Module, model_cfg: dict) -> StageResult:
    s = ctx.cfg["post"]["quantize"]
    method, bits, rule = s["method"], s.get("bits", 8), F.Rule.from_settings(s)
    # zero points are stored like scales: one float32 each
    per_scale = 2 if rule.scheme == "asymmetric" else 1
    if method == "fake":  # a float model on the weights' b-bit grid: stays on the run's device
        q, layers = F.fake_quantize_model(model, rule)
        scales = sum(v["scales"] for v in layers.values())
        info = {"engine": "torch.fake_quantize_per_channel_affine (simulated, float model)" if bits > 1 else
                "sign(w) * c (simulated, float model)", "bits": bits, "scale_rule": rule.describe(),
                "fake_layers": layers}
        extra = {"weight_bits": float(bits), "size_packed_bytes": F.packed_bytes(q, bits, per_scale * scales)}
        return StageResult(q, model_cfg, info, after_extra=extra,
                           headline=f"quantize: {bits}-bit fake quantization ({s['granularity']}, scale={rule.scale}, "
                                    f"{rule.scheme}), float model")
    info: dict[str, Any] = {"engine": "torch.ao.quantization (eager)" if s["backend"] == "eager" else "torchao.quantization"}
    reference = model  # the float weights the quantized ones are compared with
    if method == "qat" and bits == 1:
        tag = {"stage": "quantize", "role": "qat", "bits": bits}
        prepared, q = qat.quantization_aware_training(
            model, rule, lambda m: ctx.fit(m, s["finetune_epochs"], tag, lr_scale=s["lr_scale"]))
        reference = qat.real_valued(prepared, model)
        groups = sum(len(m.weight) if rule.granularity == "per_channel" else 1 for m in q.modules()
                     if isinstance(m, F.LAYERS))
        info = {"engine": "nnopt binarization: sign(w) * c forward, BinaryConnect straight-through gradient "
                          "(|w| <= 1), a float model", "bits": 1, "scale_rule": rule.describe(),
                "fake_quantized": ctx.test(prepared), "layer_errors": layer_errors(reference, q)}
        extra = {"weight_bits": 1.0, "size_packed_bytes": F.packed_bytes(q, 1, groups)}
        return StageResult(q, model_cfg, info, after_extra=extra,
                           headline=f"quantize: 1-bit QAT ({s['granularity']}, scale={rule.scale}), float model")
    if method == "qat":
        tag = {"stage": "quantize", "role": "qat", "bits": bits}
        prepared, q = qat.quantization_aware_training(
            model, rule, lambda m: ctx.fit(m, s["finetune_epochs"], tag, lr_scale=s["lr_scale"]))
        reference = prepared  # its float weights, as trained
        info.update(engine="torchao.quantization.qat (QATConfig prepare/convert with IntxWeightOnlyConfig)",
                    fake_quantized=ctx.test(prepared))  # the trained model before conversion
    else:
        g = torch.Generator(device=ctx.data.train_x.device).manual_seed(ctx.cfg["seed"])
        perm = torch.randperm(len(ctx.data.train_x), device=ctx.data.train_x.device, generator=g)
        bs = s["calibration_batch_size"]
        calibration = (ctx.data.train_x[perm[i:i + bs]]
                       for i in range(0, min(len(perm), bs * s["calibration_batches"]), bs))
        q = quantize_model(model, method, s["backend"], s["granularity"],
                             calibration if method == "static" else (), bits=bits, scheme=rule.scheme)
    info["layer_errors"] = layer_errors(reference, q)
    extra: dict[str, Any] = {}
    if rule.scheme == "asymmetric":
        info["bits"], info["scale_rule"] = bits, TORCHAO_ASYMMETRIC_RULE
    elif method in ("qat", "weight_only") and (bits < 8 or method == "qat"):
        info["bits"], info["scale_rule"] = bits, TORCHAO_SCALE_RULE
        info["storage"] = (f"int{bits} values stored one per int8 byte (IntxUnpackedToInt8Tensor): the file is "
                           f"int8-sized; size_packed_bytes counts {bits} bits per Linear weight")
        channels = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
        extra["size_packed_bytes"] = F.packed_bytes(model, bits, per_scale * channels, layers=(nn.Linear,))
    if method in ("dynamic", "static"):  # int8 kernels are invisible to torch's flop counter
        extra["flops"] = forward_flops(model, ctx.data.input_shape)
        info["flops_note"] = "FLOPs of the float model: same operations in int8, which torch's counter does not see"
    if ctx.device.type != "cpu":
        info["note"] = f"quantized kernels run on the CPU: the quantized model was evaluated on the CPU (the run trained on {ctx.device})"
    return StageResult(q, model_cfg, info, quantized=True, after_extra=extra,
                       headline=f"quantize: {info.get('note', info['engine'])}")

