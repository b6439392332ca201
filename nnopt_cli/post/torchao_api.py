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


def intx_weight_config(bits: int, scheme: str = "symmetric"):
    """torchao's weight-only config for `bits` bits (per output unit, symmetric or asymmetric with a
    zero point; runs on the CPU)."""
    import_torchao()
    from torchao.quantization import IntxWeightOnlyConfig, MappingType, PerAxis

    mapping = MappingType.ASYMMETRIC if scheme == "asymmetric" else MappingType.SYMMETRIC
    return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=PerAxis(0), mapping_type=mapping)
