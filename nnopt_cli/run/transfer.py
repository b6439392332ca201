"""Knowledge transfer: start a run from another run's weights (`init_from`), freeze layers (`freeze`).

    nnopt train init_from=outputs/run-a                          # model.pt of run-a
    nnopt train init_from=outputs/run-a:model.pruned.pt          # a stage's model (compacted widths included)
    nnopt train dataset=kmnist init_from=outputs/run-a freeze=1  # another dataset, first weight layer frozen

The new run has its own folder, config and seed; only the starting weights come from the source.
The source must have the architecture the new run names (one line otherwise, with the source's
widths): every tensor whose name and shape match is copied, and the ones that differ (the output
layer for another number of classes) keep the run's own `init` and are listed in the summary.

A source folder is untrusted input: its config and summary are read size-capped without
resolvers or `_target_`s (only a model nnopt builds by name is accepted), weights with
torch.load(weights_only=True) after their checksum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnopt_cli.config.checks import is_int
from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.models import MODELS
from nnopt_cli.store import layout
from nnopt_cli.store.checkpoint import safe_load
from nnopt_cli.store.untrusted import UntrustedFileError, load_config, summary_or_reason

KEY = "init_from"
REFUSED_FILES = {"model.quantized.pt": "an int8 model cannot be trained further; start from model.pt or the pruned model",
                 layout.CHECKPOINT: "to continue that run use resume=; init_from takes a model file"}
# model settings that do not change the tensors' shapes
SHAPE_FREE = ("dropout",)


def parse(spec: str) -> tuple[Path, str]:
    """'folder[:file]' -> (folder, file); the file defaults to model.pt."""
    head, sep, tail = str(spec).rpartition(":")
    if sep and tail.endswith(".pt") and "/" not in tail:
        return Path(head), tail
    return Path(str(spec)), layout.MODEL


def source_model(folder: Path, file: str) -> dict:
    """The model config the source file was built from: a stage's entry in summary.json, else the
    run's config. Only a model nnopt builds by name is accepted (nothing is instantiated from disk)."""
    where = f"{folder}:{file}"
    try:
        if file != layout.MODEL:
            summary, why = summary_or_reason(folder)
            if summary is None:
                raise ValueError(f"{layout.SUMMARY}: {why}")
            stage = next((s for s in summary.get("stages", []) if isinstance(s, dict) and s.get("file") == file), None)
            if stage is None:
                raise ConfigError(KEY, where, "a stage file listed in that run's summary.json stages")
            node = stage.get("model")
        else:
            node = load_config(folder / layout.CONFIG, folder=folder).get("model")
    except NnoptError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(KEY, where, f"a run folder nnopt can read ({e})") from None
    except (OSError, ValueError, UntrustedFileError) as e:
        raise ConfigError(KEY, where, f"a run folder nnopt can read ({str(e)[:150]})") from None
    if not isinstance(node, dict) or node.get("name") not in MODELS or "_target_" in node:
        raise ConfigError(KEY, where, "a model nnopt builds by name (" + ", ".join(MODELS) + ")")
    return node


def check_transfer(cfg: dict) -> None:
    """Before any data: the source exists, names an allowed file and the same architecture; freeze is valid."""
    spec, freeze = cfg.get("init_from"), cfg.get("freeze")
    if freeze is not None and not (is_int(freeze) and freeze >= 0) and not (
            isinstance(freeze, list) and all((isinstance(p, str) and p) or is_int(p) for p in freeze)):
        raise ConfigError("freeze", freeze, "a number of leading weight layers (>= 0) or a list of parameter "
                                            "name prefixes such as ['0', '2']")
    if spec is None:
        return
    if not isinstance(spec, str) or not spec:
        raise ConfigError(KEY, spec, "a run folder, optionally :file (e.g. outputs/run:model.pruned.pt)")
    folder, file = parse(spec)
    if file in REFUSED_FILES:
        raise ConfigError(KEY, spec, REFUSED_FILES[file])
    if not folder.is_dir():
        raise ConfigError(KEY, spec, "an existing run folder (not found)")
    if not (folder / file).is_file():
        raise ConfigError(KEY, spec, f"a run folder holding {file} (not found)")
    src = source_model(folder, file)
    mine = cfg["model"]
    shape = lambda node: {k: v for k, v in node.items() if k not in SHAPE_FREE}  # noqa: E731
    if shape(src) != shape(mine):
        diff = [f"model.{k}={src.get(k)!r}" for k in sorted(set(src) | set(mine), key=str)
                if k not in SHAPE_FREE and src.get(k) != mine.get(k)]
        raise ConfigError(KEY, spec, f"a source with this run's architecture; set {' '.join(diff)} to start "
                                     "from it (only the output layer may differ, for another number of classes)")


def load_into(model: nn.Module, spec: str) -> dict[str, Any]:
    """Copy the source's tensors into `model` where name and shape match; returns what the summary records."""
    folder, file = parse(spec)
    state = safe_load(folder / file, "model")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(KEY, spec, "a state_dict of tensors (nnopt's model files are)")
    own = model.state_dict()
    loaded = [k for k, v in own.items() if k in state and state[k].shape == v.shape]
    if not any(k.endswith("weight") for k in loaded):
        raise ConfigError(KEY, spec, "a model whose layers fit this one (no weight tensor matched)")
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(state[k])
    return {"run": str(folder), "file": file, "loaded": loaded,
            "reinitialized": [k for k in own if k not in loaded],  # the run's own init kept them
            "unused": [k for k in state if k not in own]}


def freeze(model: nn.Module, spec: int | list[str] | None) -> list[str]:
    """requires_grad=False on the first N weight layers' parameters, or on parameters whose names
    start with one of the prefixes; their gradients stay None, so no optimizer changes them."""
    if not spec:
        return []
    if isinstance(spec, int):
        layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))][:spec]
        ids = {id(p) for m in layers for p in m.parameters()}
        chosen = [n for n, p in model.named_parameters() if id(p) in ids]
    else:
        spec = [str(p) for p in spec]  # freeze=[0,2]: the names of nn.Sequential's layers
        chosen = [n for n, _ in model.named_parameters() if any(n == p or n.startswith(p + ".") for p in spec)]
        unknown = [p for p in spec if not any(n == p or n.startswith(p + ".") for n, _ in model.named_parameters())]
        if unknown:
            names = ", ".join(n for n, _ in model.named_parameters())
            raise ConfigError("freeze", spec, f"prefixes of this model's parameter names ({names})")
    params = dict(model.named_parameters())
    for n in chosen:
        params[n].requires_grad_(False)
    return chosen
