"""What a model really is: weights counted from the tensors, bytes measured on disk, latency timed.

Works for float models, pruned ones (after the masks are made permanent), torch.ao quantized
modules (whose `weight()`/`bias()` are methods returning quantized tensors) and torchao's
quantized tensor subclasses: every weight is dequantized before zeros are counted.
"""

from __future__ import annotations

import copy
import io
import re
import statistics
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _plain(t: torch.Tensor | None) -> torch.Tensor | None:
    """A float tensor with the values a (possibly quantized) weight stands for."""
    if t is None:
        return None
    t = t.detach()
    if t.is_quantized or type(t) not in (torch.Tensor, nn.Parameter):  # torch.ao qtensor / torchao subclass
        t = t.dequantize()
    return t.float()


def _bits(t: torch.Tensor) -> int:
    """Bits per stored weight value: torch.ao qint8 -> 8, torchao intN (held one per int8) -> N."""
    t = t.detach()
    target = getattr(t, "target_dtype", None)  # torchao IntxUnpackedToInt8Tensor: the intN it holds
    if isinstance(target, torch.dtype):
        return int(re.sub(r"\D", "", str(target)) or 8)  # torch.int4 -> 4
    data = getattr(t, "qdata", None)  # other torchao subclasses keep their integers in qdata
    if isinstance(data, torch.Tensor):
        return data.element_size() * 8
    return {torch.quint4x2: 4, torch.quint2x4: 2}.get(t.dtype, t.element_size() * 8)


def weight_bits(model: nn.Module) -> float:
    """Mean bits per Linear/Conv weight as stored: 32 for float32, 8 for int8, N for torchao intN
    (fake quantization stores float32: its stage records the simulated width instead)."""
    total, bits = 0, 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if callable(w) and not isinstance(w, torch.Tensor):  # torch.ao quantized Linear/Conv
            w = w()
        elif not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        total, bits = total + w.numel(), bits + w.numel() * _bits(w)
    return bits / max(total, 1)


def layer_weights(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of every Linear/Conv-like layer, float or quantized, by module name."""
    out = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if callable(w) and not isinstance(w, torch.Tensor):  # torch.ao quantized Linear/Conv
            out[name] = (_plain(w()), _plain(m.bias()))
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            out[name] = (_plain(m.weight), _plain(m.bias))
    return out


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Parameters, nonzeros and sparsity counted from the weights, overall and per layer.

    `sparsity` is the fraction of zero entries among the weight matrices/kernels of the
    Linear/Conv layers (what pruning targets); `params`/`nonzeros` count every parameter
    (weights, biases, normalization affine terms).
    """
    layers, w_total, w_zero, params, nonzeros = {}, 0, 0, 0, 0
    layer_mods = set()
    for name, (w, b) in layer_weights(model).items():
        layer_mods.add(name)
        zeros = int((w == 0).sum())
        layers[name] = {"shape": list(w.shape), "params": w.numel(), "nonzeros": w.numel() - zeros,
                        "sparsity": zeros / max(w.numel(), 1)}
        w_total, w_zero = w_total + w.numel(), w_zero + zeros
        for t in (w, b):
            if t is not None:
                params += t.numel()
                nonzeros += int((t != 0).sum())
    for mod_name, m in model.named_modules():  # parameters outside those layers (e.g. BatchNorm)
        if mod_name in layer_mods:
            continue
        for p in m.parameters(recurse=False):
            p = _plain(p)
            params += p.numel()
            nonzeros += int((p != 0).sum())
    return {"params": params, "nonzeros": nonzeros, "sparsity": w_zero / max(w_total, 1), "layers": layers}


def _sparse_state(state: dict) -> dict:
    """The state dict with every mostly-zero float matrix/kernel in CSR form (int32 indices)."""
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim >= 2 and (v == 0).float().mean() >= 0.5:
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                csr = v.reshape(v.shape[0], -1).to_sparse_csr()
            out[k] = {"shape": torch.tensor(v.shape), "crow": csr.crow_indices().int(),
                      "col": csr.col_indices().int(), "values": csr.values()}
        else:
            out[k] = v
    return out


def load_state(f) -> dict:
    """torch.load(weights_only=True), without torch's own TypedStorage warning for quantized tensors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        return torch.load(f, weights_only=True)


def file_sizes(path: Path) -> dict[str, int | None]:
    """Bytes of a saved state_dict: as written, deflated (zlib level 9), and sparse-encoded."""
    data = Path(path).read_bytes()
    sizes: dict[str, int | None] = {"size_bytes": len(data), "size_zip_bytes": len(zlib.compress(data, 9))}
    state = load_state(io.BytesIO(data))
    plain = all(type(v) is torch.Tensor and not v.is_quantized for v in state.values())
    if plain:
        buf = io.BytesIO()
        torch.save(_sparse_state(state), buf)
        sizes["size_sparse_bytes"] = len(buf.getvalue())
    else:  # quantized weights: no sparse encoding, the deflated size says what zeros would save
        sizes["size_sparse_bytes"] = None
    return sizes


@torch.inference_mode()
def cpu_latency_ms(models: list[nn.Module], input_shape: tuple[int, ...], batch_sizes: list[int], repeats: int,
                   warmup: int, threads: int | None = None) -> list[dict[str, float]]:
    """Median wall time of one forward pass on the CPU, per model and batch size, in milliseconds.

    The models take turns call by call (A, B, A, B, ...), so a change of load on a shared machine
    slows them alike and their ratio stays meaningful. `threads`: torch CPU threads while timing
    (None = as set).
    """
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _time_in_turns(models, input_shape, batch_sizes, repeats, warmup)
    finally:
        torch.set_num_threads(saved)


def _time_in_turns(models, input_shape, batch_sizes, repeats, warmup) -> list[dict[str, float]]:
    cpu = []
    for model in models:
        if any(t.device.type != "cpu" for t in [*model.parameters(), *model.buffers()]):
            model = copy.deepcopy(model).cpu()
        cpu.append(model.eval())
    g = torch.Generator().manual_seed(0)
    out: list[dict[str, float]] = [{} for _ in cpu]
    for bs in batch_sizes:
        x = torch.randn(bs, *input_shape, generator=g)
        for model in cpu:
            for _ in range(warmup):
                model(x)
        times: list[list[float]] = [[] for _ in cpu]
        for _ in range(repeats):
            for i, model in enumerate(cpu):
                t0 = time.perf_counter()
                model(x)
                times[i].append(time.perf_counter() - t0)
        for i, t in enumerate(times):
            out[i][str(bs)] = statistics.median(t) * 1e3
    return out
