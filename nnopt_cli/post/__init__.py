"""Post-training stages: prune, quantize, distill, run in the order chosen (`post=[prune,quantize]`).

Each stage takes the model the previous one produced (the trained model for the first), saves
its own model next to model.pt and records, in summary.json's `stages` list, its settings and the
metrics of the model before and after it, all measured the same way (see measure.py). Fine-tuning
and distillation epochs go to metrics.jsonl tagged with the stage.

A stage that fails leaves model.pt, metrics.jsonl and earlier stages' files as they are; the
summary says `status: failed`, `failed_stage` and the stage entry holds the error.

Under torchrun the stages run on rank 0 alone, after DDP training (runner.train).
"""

from __future__ import annotations

import copy
import json
import logging
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnopt_cli import data as datasets
from nnopt_cli.checks import need_int, need_int_list, need_num
from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.models import check_model, make_model
from nnopt_cli.post import fake_quant as F
from nnopt_cli.post import prune as P
from nnopt_cli.post import qat
from nnopt_cli.post import quantize as Q
from nnopt_cli.post.distill import teacher_loss
from nnopt_cli.post.flops import forward_flops
from nnopt_cli.post.measure import cpu_latency_ms, file_sizes, load_state, sparsity_report, weight_bits
from nnopt_cli.run_dir import save_state_dict
from nnopt_cli.trainer import Trainer, evaluate

log = logging.getLogger("nnopt")

STAGES = ("prune", "quantize", "distill")
OUTPUT_FILES = {"prune": "model.pruned.pt", "quantize": "model.quantized.pt", "distill": "model.student.pt"}


class StageFailed(NnoptError):
    """A post-training stage failed; the trained model and everything written before it are kept."""


def stage_names(cfg: dict) -> list[str]:
    """The stages in the order given on the command line (Hydra merges `post=[a,b]` in that order)."""
    return [k for k in (cfg.get("post") or {}) if k != "measure"]


# ---------------------------------------------------------------------------- up-front checks


def _check_model_cfg(cfg: dict, model_cfg: dict, key: str) -> None:
    """Validate a stage's model config (student/teacher) with the run's own model checks."""
    if not isinstance(model_cfg, dict) or ("name" not in model_cfg and "_target_" not in model_cfg):
        raise ConfigError(key, model_cfg, "a model config such as {name: mlp, hidden: [32]}")
    try:
        check_model(model_cfg, datasets.input_shape(cfg["dataset"]), datasets.num_classes(cfg["dataset"]))
    except ConfigError as e:
        raise ConfigError(e.key.replace("model", key, 1), e.value, e.allowed) from None


def load_run_model(run_dir: Path, input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, dict]:
    """The trained model of an earlier run folder (its .hydra/config.yaml rebuilds it, model.pt fills it)."""
    from omegaconf import OmegaConf

    cfg_path, weights = run_dir / ".hydra" / "config.yaml", run_dir / "model.pt"
    for f in (cfg_path, weights):
        if not f.is_file():
            raise ConfigError("post.distill.teacher_run", str(run_dir), f"a run folder holding {f.relative_to(run_dir)} (not found)")
    try:
        run_cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
        model = make_model(run_cfg, input_shape, num_classes)
        model.load_state_dict(torch.load(weights, weights_only=True))
    except NnoptError:
        raise
    except Exception as e:  # a corrupt file, a state dict of another architecture...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("post.distill.teacher_run", str(run_dir),
                          f"a run folder with a usable model ({type(e).__name__}: {first})") from None
    return model, run_cfg


def validate_post(cfg: dict) -> None:
    """Check the post-training settings before any training starts (ConfigError on the first problem)."""
    names = stage_names(cfg)
    if not names:
        return
    post = cfg["post"]
    m = post["measure"]
    need_int_list("post.measure.latency_batch_sizes", m["latency_batch_sizes"], 1, allow_empty=False)
    need_int("post.measure.latency_repeats", m["latency_repeats"], 1)
    need_int("post.measure.latency_warmup", m["latency_warmup"], 0)
    if m["latency_threads"] is not None:
        need_int("post.measure.latency_threads", m["latency_threads"], 1)
    if "quantize" in names and names[-1] != "quantize":
        raise ConfigError("post", names, "quantize must be the last stage (an int8 model cannot be pruned or trained further)")
    model_cfg = cfg["model"]  # the model each stage receives
    for name in names:
        s = post[name]
        if name == "prune":
            P.check(s)
        elif name == "quantize":
            Q.check(s, cfg["activation"]["name"])
            skeleton = make_model({**cfg, "model": model_cfg}, datasets.input_shape(cfg["dataset"]),
                                  datasets.num_classes(cfg["dataset"]))
            if Q.quantizable_layers(skeleton, s["method"]) == 0:
                kinds = " or ".join(t.__name__ for t in Q.QUANTIZABLE[s["method"]])
                raise ConfigError("post.quantize.method", s["method"], f"a model with {kinds} layers (model {model_cfg['name']} has none)")
        elif name == "distill":
            need_num("post.distill.temperature", s["temperature"], gt=0)
            need_num("post.distill.alpha", s["alpha"], ge=0, le=1)
            need_int("post.distill.epochs", s["epochs"], 1)
            need_int("post.distill.teacher_epochs", s["teacher_epochs"], 1)
            if not isinstance(s["baseline"], bool):
                raise ConfigError("post.distill.baseline", s["baseline"], "true or false")
            _check_model_cfg(cfg, s["student"], "post.distill.student")
            if s.get("teacher") is not None:
                _check_model_cfg(cfg, s["teacher"], "post.distill.teacher")
            if s["teacher_run"] is not None:
                run_dir = Path(str(s["teacher_run"]))
                if not run_dir.is_dir():
                    raise ConfigError("post.distill.teacher_run", str(run_dir), "an existing run folder (not found)")
                _, run_cfg = load_run_model(run_dir, datasets.input_shape(cfg["dataset"]), datasets.num_classes(cfg["dataset"]))
                if run_cfg["dataset"]["name"] != cfg["dataset"]["name"]:
                    raise ConfigError("post.distill.teacher_run", str(run_dir),
                                      f"a run on this run's dataset {cfg['dataset']['name']} (it trained on {run_cfg['dataset']['name']})")
            model_cfg = s["student"]


# ---------------------------------------------------------------------------- running the stages


@dataclass
class StageContext:
    """What every stage needs from the run: its config, data, folder and device."""

    cfg: dict
    data: Any  # nnopt_cli.data.Splits on the run's device
    run: Any  # nnopt_cli.run_dir.RunDir
    device: torch.device

    def fit(self, model: nn.Module, epochs: int, tag: dict, loss_fn=None, lr_scale: float = 1.0) -> None:
        """Train `model` for `epochs` with the run's optimizer/scheduler/batch policy; log tagged rows."""
        cfg = self.cfg
        if lr_scale != 1.0:
            cfg = {**cfg, "optimizer": {**cfg["optimizer"], "lr": cfg["optimizer"]["lr"] * lr_scale}}
        trainer = Trainer(cfg, model, len(self.data.train_x), self.device, epochs=epochs, loss_fn=loss_fn)
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            row = {**tag, "epoch": epoch, **trainer.train_epoch(epoch, self.data.train_x, self.data.train_y)}
            row["val/loss"], row["val/acc"] = evaluate(model, self.data.val_x, self.data.val_y,
                                                       cfg["eval_batch_size"], cfg["precision"])
            row["time_s"] = time.perf_counter() - t0
            self.run.append_metrics(row)
            trainer.end_epoch(row)

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
        loss, acc = evaluate(model, x, y, self.cfg["eval_batch_size"], "fp32" if quantized else self.cfg["precision"])
        return {"test/loss": loss, "test/acc": acc, "test/errors": round((1 - acc) * len(y)),
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


def run_prune(ctx: StageContext, model: nn.Module, model_cfg: dict) -> StageResult:
    s = ctx.cfg["post"]["prune"]
    work = copy.deepcopy(model)
    rounds = []
    by_threshold = s.get("threshold") is not None  # else by fraction (sparsity); check() wants one
    # each round prunes up to the schedule's value: of the fraction, or of the threshold
    goal = s["threshold"] if by_threshold else s["sparsity"]
    for r, target in enumerate(P.sparsity_schedule(goal, s["rounds"], s["schedule"]), start=1):
        if by_threshold:
            P.prune_below(work, s["method"], target, norm=s["norm"], include_last=s["prune_output"])
        else:
            P.prune_to(work, s["method"], target, norm=s["norm"], include_last=s["prune_output"])
        # read before fine-tuning moves the surviving weights: the values the masks were cut from
        thresholds = P.thresholds(work, s["method"], norm=s["norm"], used=target if by_threshold else None)
        pruned = sparsity_report(work)["sparsity"]  # m.weight = weight_orig * mask, zeros counted
        if s["finetune_epochs"] > 0:
            ctx.fit(work, s["finetune_epochs"], {"stage": "prune", "round": r, "sparsity": pruned},
                    lr_scale=s["lr_scale"])
        goal_key = "threshold" if by_threshold else "target_sparsity"
        rounds.append({"round": r, goal_key: target, "sparsity": pruned, "thresholds": thresholds, **ctx.test(work)})
    P.make_permanent(work)
    score = "unit Ln norm" if s["method"] == "structured" else "|w|"
    info: dict[str, Any] = {"rounds": rounds, "thresholds": rounds[-1]["thresholds"], "threshold_kind":
                            f"{score} < threshold pruned" if by_threshold else
                            f"{score}: threshold = the smallest kept, the one the fraction implied"}
    out = work
    if s["compact"]:
        small = P.compact(work, ctx.data.input_shape)
        with torch.no_grad():  # the compacted model must compute what the masked one does
            work.eval()
            a, b = work(ctx.data.test_x), small(ctx.data.test_x)
        info["compaction"] = {
            "max_abs_logit_diff": (a - b).abs().max().item(),
            "same_predictions": (a.argmax(1) == b.argmax(1)).float().mean().item(),
            "masked_params": sum(p.numel() for p in work.parameters()),
            "compacted_params": sum(p.numel() for p in small.parameters()),
        }
        out = small
    info["sparsity_before_compaction"] = sparsity_report(work)["sparsity"]
    zeros_left = sparsity_report(out)["sparsity"]
    compacted = sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in model.parameters())
    info["compacted"], info["masked_only"] = compacted, not compacted and zeros_left > 0
    notes = []
    if compacted:
        units = [[m.weight.shape[0] for m in P.prunable_layers(x, include_last=False)] for x in (model, out)]
        notes.append(f"compacted: hidden units {units[0]} -> {units[1]}, layers rebuilt without the removed "
                     "ones (really smaller and faster)")
    if zeros_left > 0:
        notes.append(f"{'the remaining' if compacted else 'masked only:'} {zeros_left:.1%} zero weights sit inside "
                     "dense tensors: no file-size or speed gain from them with dense kernels; size_zip_bytes / "
                     "size_sparse_bytes show what an encoding that skips zeros saves")
    info["note"] = "; ".join(notes) or "nothing pruned"
    return StageResult(out, P.model_config_of(out, model_cfg), info, headline=f"prune: {info['note']}")


def run_quantize(ctx: StageContext, model: nn.Module, model_cfg: dict) -> StageResult:
    s = ctx.cfg["post"]["quantize"]
    method, bits = s["method"], s.get("bits", 8)
    if method == "fake":  # a float model on the weights' b-bit grid: stays on the run's device
        q, layers = F.fake_quantize_model(model, bits, s["granularity"])
        scales = sum(v["scales"] for v in layers.values())
        info = {"engine": "torch.fake_quantize_per_tensor_affine / _per_channel_affine (simulated, float model)",
                "bits": bits, "scale_rule": F.SCALE_RULE.format(granularity=s["granularity"].replace("_", " ")),
                "fake_layers": layers}
        extra = {"weight_bits": float(bits), "size_packed_bytes": F.packed_bytes(q, bits, scales)}
        return StageResult(q, model_cfg, info, after_extra=extra,
                           headline=f"quantize: {bits}-bit fake quantization ({s['granularity']}), float model")
    info: dict[str, Any] = {"engine": "torch.ao.quantization (eager)" if s["backend"] == "eager" else "torchao.quantization"}
    if method == "qat":
        tag = {"stage": "quantize", "role": "qat", "bits": bits}
        prepared, q = qat.quantization_aware_training(
            model, bits, lambda m: ctx.fit(m, s["finetune_epochs"], tag, lr_scale=s["lr_scale"]))
        info.update(engine="torchao.quantization.qat (QATConfig prepare/convert with IntxWeightOnlyConfig)",
                    fake_quantized=ctx.test(prepared))  # the trained model before conversion
    else:
        g = torch.Generator(device=ctx.data.train_x.device).manual_seed(ctx.cfg["seed"])
        perm = torch.randperm(len(ctx.data.train_x), device=ctx.data.train_x.device, generator=g)
        bs = s["calibration_batch_size"]
        calibration = (ctx.data.train_x[perm[i:i + bs]]
                       for i in range(0, min(len(perm), bs * s["calibration_batches"]), bs))
        q = Q.quantize_model(model, method, s["backend"], s["granularity"],
                             calibration if method == "static" else (), bits=bits)
    extra: dict[str, Any] = {}
    if method in ("qat", "weight_only") and (bits < 8 or method == "qat"):
        info["bits"], info["scale_rule"] = bits, Q.TORCHAO_SCALE_RULE
        info["storage"] = (f"int{bits} values stored one per int8 byte (IntxUnpackedToInt8Tensor): the file is "
                           f"int8-sized; size_packed_bytes counts {bits} bits per Linear weight")
        channels = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
        extra["size_packed_bytes"] = F.packed_bytes(model, bits, channels, layers=(nn.Linear,))
    if method in ("dynamic", "static"):  # int8 kernels are invisible to torch's flop counter
        extra["flops"] = forward_flops(model, ctx.data.input_shape)
        info["flops_note"] = "FLOPs of the float model: same operations in int8, which torch's counter does not see"
    if ctx.device.type != "cpu":
        info["note"] = f"quantized kernels run on the CPU: the quantized model was evaluated on the CPU (the run trained on {ctx.device})"
    return StageResult(q, model_cfg, info, quantized=True, after_extra=extra,
                       headline=f"quantize: {info.get('note', info['engine'])}")


def run_distill(ctx: StageContext, model: nn.Module, model_cfg: dict) -> StageResult:
    s, cfg, data = ctx.cfg["post"]["distill"], ctx.cfg, ctx.data
    if s["teacher_run"] is not None:
        teacher, run_cfg = load_run_model(Path(str(s["teacher_run"])), data.input_shape, data.num_classes)
        teacher, source, teacher_cfg = teacher.to(ctx.device), f"run {s['teacher_run']}", run_cfg["model"]
    elif s.get("teacher") is not None:
        torch.manual_seed(cfg["seed"])
        teacher = make_model({**cfg, "model": s["teacher"]}, data.input_shape, data.num_classes).to(ctx.device)
        ctx.fit(teacher, s["teacher_epochs"], {"stage": "distill", "role": "teacher"})
        source, teacher_cfg = "trained in this stage", s["teacher"]
    else:
        teacher, source, teacher_cfg = model, "the model this run trained", model_cfg
    teacher.eval()
    info: dict[str, Any] = {"teacher": {"source": source, "model": teacher_cfg,
                                        "params": sum(p.numel() for p in teacher.parameters()), **ctx.test(teacher)}}
    torch.manual_seed(cfg["seed"])
    student = make_model({**cfg, "model": s["student"]}, data.input_shape, data.num_classes).to(ctx.device)
    init = copy.deepcopy(student.state_dict())  # the baseline starts from the very same weights
    ctx.fit(student, s["epochs"], {"stage": "distill", "role": "student"},
            loss_fn=teacher_loss(teacher, s["temperature"], s["alpha"]))
    if s["baseline"]:
        alone = make_model({**cfg, "model": s["student"]}, data.input_shape, data.num_classes).to(ctx.device)
        alone.load_state_dict(init)
        ctx.fit(alone, s["epochs"], {"stage": "distill", "role": "student_alone"})
        info["student_alone"] = ctx.test(alone)
    info["student"] = ctx.test(student)
    line = f"distill: teacher {info['teacher']['test/acc']:.4f} ({info['teacher']['test/errors']} errors)"
    if "student_alone" in info:
        line += f" | student alone {info['student_alone']['test/acc']:.4f} ({info['student_alone']['test/errors']} errors)"
    line += f" | distilled student {info['student']['test/acc']:.4f} ({info['student']['test/errors']} errors)"
    return StageResult(student, s["student"], info, headline=line)


def save_model(path: Path, model: nn.Module) -> Path:
    """The state dict on the CPU, written atomically (quantized state holds non-tensor entries too)."""
    state = model.state_dict()
    cpu = OrderedDict((k, v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items())
    cpu._metadata = state._metadata  # module versions: torch.ao's quantized modules load by them
    save_state_dict(path, cpu)
    return path


RUNNERS = {"prune": run_prune, "quantize": run_quantize, "distill": run_distill}


def _summary_line(name: str, before: dict, after: dict) -> str:
    lat = " ".join(f"b{b} {before['latency_ms'][b]:.3g}->{after['latency_ms'][b]:.3g}ms" for b in after["latency_ms"])
    return (f"{name}: test/acc {before['test/acc']:.4f} -> {after['test/acc']:.4f} | sparsity "
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
        entry: dict[str, Any] = {"name": name, "status": "running", "settings": cfg["post"][name],
                                 "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                                 "before": before}
        summary["stages"].append(entry)
        run.write_summary(summary)
        t0 = time.perf_counter()
        try:
            result = RUNNERS[name](ctx, current, model_cfg)
            path = save_model(run.path / OUTPUT_FILES[name], result.model)
            after = {**ctx.measure(result.model, path, result.quantized), **result.after_extra}
            lat_before, lat_after = ctx.latency(current, result.model)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            entry.update(status="failed", error=first if isinstance(e, NnoptError) else f"{type(e).__name__}: {first}",
                         time_s=time.perf_counter() - t0)
            if not isinstance(e, NnoptError):
                entry["traceback"] = "".join(traceback.format_exception(e))
            # the training numbers and model.pt stay valid; the run as asked for did not finish
            summary.update(status="failed", failed_stage=name, error=f"post-training stage {name} failed: {entry['error']}")
            run.write_summary(summary)
            raise StageFailed(f"post-training stage {name} failed: {entry['error']} "
                              "(model.pt, metrics.jsonl and earlier stages' files are kept)") from e
        timing = {"latency_device": "cpu", "latency_threads": cfg["post"]["measure"]["latency_threads"] or torch.get_num_threads()}
        entry["before"] = {**before, "latency_ms": lat_before, **timing}
        entry.update(status="completed", file=path.name, model=result.model_cfg,
                     after={**after, "latency_ms": lat_after, **timing}, **result.info, time_s=time.perf_counter() - t0)
        run.write_summary(summary)
        log.info(_summary_line(name, entry["before"], entry["after"]))
        if result.headline:
            log.info(result.headline)
        current, model_cfg, before = result.model, result.model_cfg, after


def load_stage_model(run_dir: str | Path, file: str = "model.pruned.pt") -> nn.Module:
    """Rebuild a stage's saved model from a run folder (config + summary.json + the weights file).

        model = load_stage_model("outputs/2026-01-01/12-00-00-000000", "model.quantized.pt")
    """
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    stage = next(s for s in summary.get("stages", []) if s.get("file") == file)
    shape = tuple(stage["input_shape"])
    model = make_model({**cfg, "model": stage["model"]}, shape, stage["num_classes"])
    if stage["name"] == "quantize":
        q = stage["settings"]
        model = Q.rebuild_quantized(model, q["method"], q["backend"], q["granularity"], shape, q.get("bits", 8))
    model.load_state_dict(load_state(run_dir / file))
    return model.eval()
