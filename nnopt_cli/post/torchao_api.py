"""torchao, imported on demand (it is slow to import and optional for most runs), and the
weight-only config nnopt uses below 8 bits on the CPU."""

from __future__ import annotations

import logging

import torch


def import_torchao():
    """Import torchao (ImportError if missing) without the warning torch logs when torchao registers
    an Enum with its pytree."""
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    import torchao

    return torchao


def intx_weight_config(bits: int):
    """torchao's weight-only config for `bits` < 8 (per output unit, symmetric; runs on the CPU)."""
    import_torchao()
    from torchao.quantization import IntxWeightOnlyConfig, PerAxis

    return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=PerAxis(0))
