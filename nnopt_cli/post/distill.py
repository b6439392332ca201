"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a student learns from a teacher's soft targets.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

The T^2 factor keeps the soft-target gradients on the same scale as the hard-target ones when T
changes (their magnitude falls as 1/T^2).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnopt_cli import data as datasets
from nnopt_cli.config.checks import need_bool, need_int, need_num
from nnopt_cli.errors import ConfigError
from nnopt_cli.models import check_model, make_model
from nnopt_cli.post.load import load_run_model, read_run_config, trained_shape
from nnopt_cli.post.stage import StageContext, StageResult
from nnopt_cli.store.targets import trusted_targets

OUTPUT_FILE = "model.student.pt"


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
                 temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, y)
    return alpha * t * t * soft + (1 - alpha) * hard


def teacher_loss(teacher: nn.Module, temperature: float, alpha: float):
    """A Trainer loss_fn: the distillation loss against `teacher`'s logits on the same batch."""
    teacher.eval()

    def loss_fn(out: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        return distill_loss(out, target, y, temperature, alpha)

    return loss_fn


def _check_model_cfg(cfg: dict, model_cfg: dict, key: str) -> None:
    """Validate a stage's model config (student/teacher) with the run's own model checks."""
    if not isinstance(model_cfg, dict) or ("name" not in model_cfg and "_target_" not in model_cfg):
        raise ConfigError(key, model_cfg, "a model config such as {name: mlp, hidden: [32]}")
    try:
        check_model(model_cfg, datasets.input_shape(cfg["dataset"]), datasets.num_classes(cfg["dataset"]))
    except ConfigError as e:
        raise ConfigError(e.key.replace("model", key, 1), e.value, e.allowed) from None


def check(cfg: dict, model_cfg: dict) -> dict:
    """Validate post.distill; the next stage receives the student."""
    s = cfg["post"]["distill"]
    need_num("post.distill.temperature", s["temperature"], gt=0)
    need_num("post.distill.alpha", s["alpha"], ge=0, le=1)
    need_int("post.distill.epochs", s["epochs"], 1)
    need_int("post.distill.teacher_epochs", s["teacher_epochs"], 1)
    need_bool("post.distill.baseline", s["baseline"])
    _check_model_cfg(cfg, s["student"], "post.distill.student")
    if s.get("teacher") is not None:
        _check_model_cfg(cfg, s["teacher"], "post.distill.teacher")
    if s["teacher_run"] is not None:
        run_dir = Path(str(s["teacher_run"]))
        if not run_dir.is_dir():
            raise ConfigError("post.distill.teacher_run", str(run_dir), "an existing run folder (not found)")
        shape, classes = datasets.input_shape(cfg["dataset"]), datasets.num_classes(cfg["dataset"])
        if shape is None:  # your own data: the teacher run recorded the shape its model was built for
            shape, classes = trained_shape(run_dir, read_run_config(run_dir, "post.distill.teacher_run",
                                                                     trusted_targets(cfg)))
        _, run_cfg = load_run_model(run_dir, shape, classes, trusted_targets(cfg))
        if run_cfg["dataset"]["name"] != cfg["dataset"]["name"]:
            raise ConfigError("post.distill.teacher_run", str(run_dir),
                              f"a run on this run's dataset {cfg['dataset']['name']} (it trained on {run_cfg['dataset']['name']})")
    return s["student"]


def run(ctx: StageContext, model: nn.Module, model_cfg: dict) -> StageResult:
    s, cfg, data = ctx.cfg["post"]["distill"], ctx.cfg, ctx.data
    if s["teacher_run"] is not None:
        teacher, run_cfg = load_run_model(Path(str(s["teacher_run"])), data.input_shape, data.num_classes,
                                          trusted_targets(ctx.cfg))
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
