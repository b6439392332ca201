"""Post-training stages: prune, quantize, distill, run in the order chosen (`post=[prune,quantize]`).

Each stage takes the model the previous one produced (the trained model for the first), saves
its own model next to model.pt and records, in summary.json's `stages` list, its settings and the
metrics of the model before and after it, all measured the same way (see measure.py). Fine-tuning
and distillation epochs go to metrics.jsonl tagged with the stage.

A stage that fails leaves model.pt, metrics.jsonl and earlier stages' files as they are; the
summary says `status: failed`, `failed_stage` and the stage entry holds the error. A fine-tune whose
loss or val/loss becomes NaN/inf says `status: diverged` instead (the entry also `diverged_at`).

A stage is one module here (prune.py, quantize.py, distill.py): OUTPUT_FILE, check(cfg, model_cfg)
and run(ctx, model, model_cfg) -> StageResult (stage.py); adding one is that module, its
conf/post/<stage>.yaml and one line in STAGES.

Under torchrun the stages run on rank 0 alone, after DDP training (runner.train).

Beside the stages, fusing several finished runs: ensemble.py (models as one, the mean of their
softmaxes: distillation from several teacher runs) and soup.py (weight averages, `nnopt fuse`).
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

import torch
from torch import nn

from nnopt_cli.config.stages import check_post_values, stage_names
from nnopt_cli.errors import NnoptError
from nnopt_cli.post import distill, prune, quantize
from nnopt_cli.post.load import load_run_model, load_stage_model
from nnopt_cli.post.stage import StageContext, StageResult, save_model
from nnopt_cli.store.layout import Status
from nnopt_cli.training.metrics import Diverged

log = logging.getLogger("nnopt")

# name (conf/post/<name>.yaml) -> the stage's module
STAGES = {
    "prune": prune,
    "quantize": quantize,
    "distill": distill,
}

__all__ = ["STAGES", "StageContext", "StageDiverged", "StageFailed", "StageResult", "load_run_model", "load_stage_model",
           "run_stages", "stage_names", "validate_post"]


class StageFailed(NnoptError):
    """A post-training stage failed; the trained model and everything written before it are kept."""

    status = Status.FAILED  # what summary.json says


class StageDiverged(StageFailed):
    """A stage's fine-tune diverged: the status and exit code of a run that diverges."""

    status = Status.DIVERGED
    exit_code = 3


def validate_post(cfg: dict) -> None:
    """Check the post-training settings before any training starts (ConfigError on the first problem):
    their values (config/stages.py), then each stage against the model it will receive."""
    check_post_values(cfg)
    model_cfg = cfg["model"]  # the model each stage receives: a distilled student from there on
    for name in stage_names(cfg):
        model_cfg = STAGES[name].check(cfg, model_cfg)


def _summary_line(name: str, before: dict, after: dict) -> str:
    lat = " ".join(f"b{b} {before['latency_ms'][b]:.3g}->{after['latency_ms'][b]:.3g}ms" for b in after["latency_ms"])
    score = "test/acc" if "test/acc" in after else "test/rmse"  # regression: the RMSE
    return (f"{name}: {score} {before[score]:.4f} -> {after[score]:.4f} | sparsity "
            f"{before['sparsity']:.3f} -> {after['sparsity']:.3f} | nonzeros {before['nonzeros']} -> {after['nonzeros']} | "
            f"size {before['size_bytes']} -> {after['size_bytes']} B (zip {after['size_zip_bytes']} B) | "
            f"flops {before['flops']} -> {after['flops']} | {lat}")


def run_stages(cfg: dict, model: nn.Module, data, run, summary: dict, device: torch.device) -> None:
    """Run the configured stages on the trained `model` (already saved as model.pt), recording each
    in summary["stages"]; raises StageFailed after recording a failure."""
    ctx = StageContext(cfg, data, run, device)
    summary["stages"] = []
    current, model_cfg = model, cfg["model"]
    before = ctx.measure(current, run.model_path)
    for name in stage_names(cfg):
        entry: dict[str, Any] = {"name": name, "status": Status.RUNNING, "settings": cfg["post"][name],
                                 "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                                 "before": before}
        summary["stages"].append(entry)
        run.write_summary(summary)
        t0 = time.perf_counter()
        try:
            result = STAGES[name].run(ctx, current, model_cfg)
            path = save_model(run.path / STAGES[name].OUTPUT_FILE, result.model)
            after = {**ctx.measure(result.model, path, result.quantized), **result.after_extra}
            lat_before, lat_after = ctx.latency(current, result.model)
        except Diverged as d:  # a fine-tune blew up: the runner's status, with where it happened
            entry.update(status=Status.DIVERGED, error=f"training diverged: {d}",
                         diverged_at={"epoch": d.epoch, "step": d.step}, time_s=time.perf_counter() - t0)
            summary.update(status=Status.DIVERGED, failed_stage=name,
                           error=f"post-training stage {name} diverged: {d}")
            run.write_summary(summary)
            raise StageDiverged(f"post-training stage {name}: training diverged: {d} "
                              "(model.pt, metrics.jsonl and earlier stages' files are kept)") from d
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            entry.update(status=Status.FAILED, error=first if isinstance(e, NnoptError) else f"{type(e).__name__}: {first}",
                         time_s=time.perf_counter() - t0)
            if not isinstance(e, NnoptError):
                entry["traceback"] = "".join(traceback.format_exception(e))
            # the training numbers and model.pt stay valid; the run as asked for did not finish
            summary.update(status=Status.FAILED, failed_stage=name, error=f"post-training stage {name} failed: {entry['error']}")
            run.write_summary(summary)
            raise StageFailed(f"post-training stage {name} failed: {entry['error']} "
                              "(model.pt, metrics.jsonl and earlier stages' files are kept)") from e
        timing = {"latency_device": "cpu", "latency_threads": cfg["post"]["measure"]["latency_threads"] or torch.get_num_threads()}
        entry["before"] = {**before, "latency_ms": lat_before, **timing}
        entry.update(status=Status.COMPLETED, file=path.name, model=result.model_cfg,
                     after={**after, "latency_ms": lat_after, **timing}, **result.info, time_s=time.perf_counter() - t0)
        run.write_summary(summary)
        log.info(_summary_line(name, entry["before"], entry["after"]))
        if result.headline:
            log.info(result.headline)
        current, model_cfg, before = result.model, result.model_cfg, after
