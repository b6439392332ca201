"""LayerDiagnostics: the observer behind `diagnostics=basic|full`, writing diagnostics.jsonl.

Every `every` optimizer steps (the 1st, every+1-th, ...) and at each epoch end it records per layer
(Linear/Conv and the activation after it, see stats.py):

    step rows   grad_norm, weight_norm, update_ratio ||W_after - W_before|| / ||W_before|| of the
                step, and a probe of a fixed training batch: out_mean/out_std (the layer's output),
                act_mean/act_std, dead (ReLU family) or saturated (sigmoid/tanh)
    epoch rows  weight_norm and the probe
    sharpness   top Hessian eigenvalue and Hutchinson trace (sharpness.py) after chosen epochs
    end row     the final model's probe totals and sharpness, also put in summary.json as diag/*

Each row is one JSON line {"kind", "epoch", "step", ...}, appended whole and fsynced at epoch ends
and checkpoints; a resumed run drops rows past its checkpoint's step, so the file of a resumed
run equals the file of the run left alone. The probe batch and all random vectors come from this
observer's own torch.Generator: turning diagnostics on does not change a single weight.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from nnopt_cli.config.checks import need_int, need_num
from nnopt_cli.diagnostics import stats
from nnopt_cli.diagnostics.sharpness import measure
from nnopt_cli.errors import ConfigError
from nnopt_cli.store import layout
from nnopt_cli.store.folder import RunDir, _clean
from nnopt_cli.training.observers import EpochInfo, Observer, RunInfo, StepInfo

log = logging.getLogger("nnopt")

SHARPNESS_DEFAULTS = {"epochs": [], "every_epochs": 0, "at_end": True, "samples": 1024, "iters": 20,
                      "tol": 1e-3, "trace_samples": 10}
# summary.json keys (compare shows them as columns)
SUMMARY_KEYS = {"dead_share": "diag/dead_share", "saturated_share": "diag/saturated_share",
                "top_eigenvalue": "diag/sharpness", "trace": "diag/hessian_trace"}


def check_sharpness(node: Any) -> dict[str, Any]:
    """The sharpness settings merged over SHARPNESS_DEFAULTS, or {} when off (null)."""
    if node is None or node is False:
        return {}
    if not isinstance(node, dict):
        raise ConfigError("diagnostics.sharpness", node, "null or a node with keys " + ", ".join(SHARPNESS_DEFAULTS))
    unknown = sorted(set(node) - set(SHARPNESS_DEFAULTS))
    if unknown:
        raise ConfigError(f"diagnostics.sharpness.{unknown[0]}", node[unknown[0]],
                          "one of the keys " + ", ".join(SHARPNESS_DEFAULTS))
    s = {**SHARPNESS_DEFAULTS, **node}
    epochs = s["epochs"]
    if not isinstance(epochs, list) or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1
                                               for e in epochs):
        raise ConfigError("diagnostics.sharpness.epochs", epochs, "a list of epochs >= 1")
    need_int("diagnostics.sharpness.every_epochs", s["every_epochs"], 0)
    if not isinstance(s["at_end"], bool):
        raise ConfigError("diagnostics.sharpness.at_end", s["at_end"], "true or false")
    need_int("diagnostics.sharpness.samples", s["samples"], 1)
    need_int("diagnostics.sharpness.iters", s["iters"], 1)
    need_num("diagnostics.sharpness.tol", s["tol"], ge=0)
    need_int("diagnostics.sharpness.trace_samples", s["trace_samples"], 0)
    return s


class LayerDiagnostics(Observer):
    def __init__(self, every: int = 50, probe_size: int = 256, saturation: float = 0.02, probe_seed: int = 0,
                 epoch_end: bool = True, sharpness: dict | None = None):
        need_int("diagnostics.every", every, 1)
        need_int("diagnostics.probe_size", probe_size, 1)
        need_num("diagnostics.saturation", saturation, gt=0, lt=0.5)
        need_int("diagnostics.probe_seed", probe_seed, 0)
        if not isinstance(epoch_end, bool):
            raise ConfigError("diagnostics.epoch_end", epoch_end, "true or false")
        self.every, self.probe_size, self.saturation = every, probe_size, saturation
        self.probe_seed, self.epoch_end = probe_seed, epoch_end
        self.sharpness = check_sharpness(sharpness)
        self.step = 0  # optimizer steps seen: rows past a checkpoint's step are dropped on resume
        self.active = False
        self.file = None
        self._before: list[torch.Tensor] | None = None
        self._grads: list | None = None

    # ------------------------------------------------------------------ hooks

    def on_run_start(self, run: RunInfo) -> None:
        self.active = run.write  # under DDP, rank 0 alone measures and writes
        if not self.active:
            return
        self.model, self.layers = run.model, stats.find_layers(run.model)
        g = torch.Generator().manual_seed(self.probe_seed)
        n = len(run.train_x)
        order = torch.randperm(n, generator=g).to(run.train_x.device)
        self.probe_x = run.train_x[order[:min(self.probe_size, n)]]
        if self.sharpness:
            pick = order[:min(self.sharpness["samples"], n)]
            self.sharp_x, self.sharp_y = run.train_x[pick], run.train_y[pick]
        self.path = Path(run.run_dir) / layout.DIAGNOSTICS
        self._keep_rows_until(self.step)
        self.file = open(self.path, "a")  # noqa: SIM115 - open for the run, closed in close()

    def before_step(self, step: StepInfo) -> None:
        if self.active and (step.step - 1) % self.every == 0:
            self._grads = stats.grad_norms(self.layers)
            self._before = stats.snapshot(self.layers)

    def after_step(self, step: StepInfo) -> None:
        self.step = step.step
        if self._before is None:
            return
        ratios = stats.update_ratios(self.layers, self._before)
        per_layer = {"grad_norm": self._grads, "update_ratio": ratios}
        self._before = self._grads = None
        self._write({"kind": "step", "epoch": step.epoch, "step": step.step, **self._measure(per_layer)})

    def on_epoch_end(self, epoch: EpochInfo) -> None:
        self.step = epoch.step
        if not self.active:
            return
        if self.epoch_end:
            self._write({"kind": "epoch", "epoch": epoch.epoch, "step": epoch.step, **self._measure({})})
        s = self.sharpness
        if s and (epoch.epoch in s["epochs"] or (s["every_epochs"] and epoch.epoch % s["every_epochs"] == 0)):
            self._write({"kind": "sharpness", "epoch": epoch.epoch, "step": epoch.step, **self._sharpness()})
        self._sync()

    def on_run_end(self, summary: dict[str, Any]) -> None:
        if not self.active or summary.get("status") != layout.Status.COMPLETED:
            return
        end = {k: v.item() for k, v in stats.totals(self._probe()).items()}
        if self.sharpness.get("at_end"):
            end.update(self._sharpness())
        self._write({"kind": "end", "epoch": summary.get("epochs"), "step": self.step, **end})
        self._sync()
        summary.update({SUMMARY_KEYS[k]: v for k, v in end.items() if k in SUMMARY_KEYS})

    def close(self) -> None:
        if self.file is not None:
            self._sync()
            self.file.close()
            self.file = None

    def state_dict(self) -> dict[str, Any]:
        if self.file is not None:  # a checkpoint is being written: make the rows so far durable
            self._sync()
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))

    # ------------------------------------------------------------------ measuring and writing

    def _probe(self) -> dict[str, dict]:
        return stats.probe(self.model, self.layers, self.probe_x, self.saturation)

    def _measure(self, per_layer: dict[str, list]) -> dict[str, Any]:
        """One row's layers: every number gathered as tensors, then one transfer to the host."""
        per_layer = {**per_layer, "weight_norm": stats.weight_norms(self.layers)}
        probed = self._probe()
        rows: dict[str, dict] = {}
        for i, layer in enumerate(self.layers):
            row: dict[str, Any] = {"type": layer.kind, "shape": layer.shape}
            if layer.act_name is not None:
                row["act"] = layer.act_name
            for key, values in per_layer.items():
                row[key] = values[i]
            for key in ("out_mean", "out_std", "act_mean", "act_std", "dead", "saturated"):
                if key in probed[layer.name]:
                    row[key] = probed[layer.name][key]
            rows[layer.name] = row
        tot = stats.totals(probed)
        tensors = [v for r in rows.values() for v in r.values() if isinstance(v, torch.Tensor)]
        tensors += list(tot.values())
        values = iter(torch.stack([t.float() for t in tensors]).tolist() if tensors else [])
        for r in rows.values():
            for k, v in r.items():
                if isinstance(v, torch.Tensor):
                    r[k] = next(values)
        return {"layers": rows, **{k: next(values) for k in tot}}

    def _sharpness(self) -> dict[str, Any]:

        s = self.sharpness
        return measure(self.model, self.sharp_x, self.sharp_y, iters=s["iters"], tol=s["tol"],
                       trace_samples=s["trace_samples"], seed=self.probe_seed)

    def _write(self, row: dict) -> None:
        self.file.write(json.dumps(_clean(row)) + "\n")

    def _sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def _keep_rows_until(self, step: int) -> None:
        """A resumed run redoes the steps after its checkpoint: drop their rows (and a torn last line)."""
        RunDir(self.path.parent).write_rows_kept(self.path, lambda r: isinstance(r.get("step"), int) and r["step"] <= step)
