"""What every post-training stage gets and returns: StageContext (the run's config, data, folder
and device, with fit / test / measure / latency helpers) and StageResult.

A stage is one module in post/ with OUTPUT_FILE, check(cfg, model_cfg) -> the model config the
next stage receives, and run(ctx, model, model_cfg) -> StageResult; post.STAGES lists them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnopt_cli.models.flops import forward_flops
from nnopt_cli.post.measure import cpu_latency_ms, file_sizes, sparsity_report, weight_bits
from nnopt_cli.store.folder import save_state_dict
from nnopt_cli.training.fit import FitHooks, fit
from nnopt_cli.training.metrics import evaluate_split
from nnopt_cli.training.trainer import Trainer


@dataclass
class StageContext:
    """What every stage needs from the run: its config, data, folder and device."""

    cfg: dict
    data: Any  # nnopt_cli.data.Splits on the run's device
    run: Any  # nnopt_cli.store.folder.RunDir
    device: torch.device

    def fit(self, model: nn.Module, epochs: int, tag: dict, loss_fn=None, lr_scale: float = 1.0) -> None:
        """Train `model` for `epochs` with the run's optimizer/scheduler/batch policy and the runner's
        loop (fit.py: a non-finite loss or val/loss raises Diverged); log rows tagged with `tag`."""
        cfg = self.cfg
        if lr_scale != 1.0:
            cfg = {**cfg, "optimizer": {**cfg["optimizer"], "lr": cfg["optimizer"]["lr"] * lr_scale}}
        trainer = Trainer(cfg, model, len(self.data.train_x), self.device, epochs=epochs, loss_fn=loss_fn,
                          class_counts=self.data.class_counts())
        write = FitHooks(epoch_row=lambda row: self.run.append_metrics({**tag, **row}))
        fit(trainer, self.data, range(1, epochs + 1), write)

    def latency(self, before: nn.Module, after: nn.Module) -> tuple[dict, dict]:
        """CPU latency of a stage's input and output models, timed in turns."""
        m = self.cfg["post"]["measure"]
        a, b = cpu_latency_ms([before, after], self.data.input_shape, list(m["latency_batch_sizes"]),
                              m["latency_repeats"], m["latency_warmup"], m["latency_threads"])
        return a, b

    def test(self, model: nn.Module, quantized: bool = False) -> dict[str, Any]:
        x, y = self.data.test_x, self.data.test_y
        if quantized:  # int8 kernels are CPU kernels
            x, y = x.cpu(), y.cpu()
        got = evaluate_split(model, x, y, self.cfg["eval_batch_size"], "fp32" if quantized else self.cfg["precision"])
        if "acc" not in got:  # regression: its error measures, no accuracy
            return {**{f"test/{k}": got[k] for k in ("loss", "mse", "rmse", "r2")}, "device": str(x.device)}
        return {"test/loss": got["loss"], "test/acc": got["acc"], "test/errors": round((1 - got["acc"]) * len(y)),
                "device": str(x.device)}

    def measure(self, model: nn.Module, path: Path, quantized: bool = False) -> dict[str, Any]:
        """Accuracy, weights and bytes on disk of `model`, saved at `path` (latency: see `latency`)."""
        report = sparsity_report(model)
        return {
            **self.test(model, quantized),
            "params": report["params"],
            "nonzeros": report["nonzeros"],
            "sparsity": report["sparsity"],
            **file_sizes(path),
            "flops": forward_flops(model, self.data.input_shape),  # per sample, torch's counter (flops.py)
            "weight_bits": weight_bits(model),
            "layers": report["layers"],
        }


@dataclass
class StageResult:
    model: nn.Module
    model_cfg: dict  # the conf/model entry that rebuilds `model`'s architecture
    info: dict
    quantized: bool = False
    headline: str = ""  # a stage-specific line for the log
    # what the stage knows about its output that measuring it cannot see (the simulated bits of a
    # fake-quantized float model, FLOPs of int8 kernels torch's counter skips): overrides `after`
    after_extra: dict = field(default_factory=dict)


def save_model(path: Path, model: nn.Module) -> Path:
    """The state dict on the CPU, written atomically (quantized state holds non-tensor entries too)."""
    state = model.state_dict()
    cpu = OrderedDict((k, v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items())
    cpu._metadata = state._metadata  # module versions: torch.ao's quantized modules load by them
    save_state_dict(path, cpu)
    return path
