"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a student learns from a teacher's soft targets.

    loss = alpha * T^2 * KL(p_T || softmax(student / T)) + (1 - alpha) * CE(student, y)

where p_T is the teacher's softmax(logits / T), or with several teacher runs the average of theirs
(an ensemble's soft targets). The T^2 factor keeps the soft-target gradients on the same scale as
the hard-target ones when T changes (their magnitude falls as 1/T^2).

targets=hard instead trains the student with plain cross-entropy on the teacher's (ensemble's)
predictions, argmax of the averaged softmax at T=1, in place of the dataset's labels: the deep
model's hard predictions as the shallow model's labels.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnopt_cli import data as datasets
from nnopt_cli.errors import ConfigError
from nnopt_cli.models import check_model, make_model
from nnopt_cli.post.ensemble import Ensemble, mean_softmax
from nnopt_cli.post.load import load_run_model, read_run_config, trained_shape
from nnopt_cli.post.stage import StageContext, StageResult
from nnopt_cli.store.targets import trusted_targets
from nnopt_cli.store.untrusted import without_data_locations

OUTPUT_FILE = "model.student.pt"


KEY = "post.distill.teacher_run"


def distill_loss(student_logits: torch.Tensor, soft_targets: torch.Tensor, y: torch.Tensor,
                 temperature: float, alpha: float) -> torch.Tensor:
    """`soft_targets`: the teacher's probabilities at temperature T (mean_softmax)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=1), soft_targets.float(), reduction="batchmean")
    hard = F.cross_entropy(student_logits, y)
    return alpha * t * t * soft + (1 - alpha) * hard


def teacher_loss(teachers: list[nn.Module], temperature: float, alpha: float, targets: str = "soft"):
    """A Trainer loss_fn against the teachers' outputs on the same batch: the distillation loss on
    their averaged soft targets, or (targets=hard) cross-entropy on their ensemble's predictions."""
    for teacher in teachers:
        teacher.eval()

    def loss_fn(out: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = [teacher(x) for teacher in teachers]
        if targets == "hard":
            return F.cross_entropy(out, mean_softmax(logits).argmax(1))
        return distill_loss(out, mean_softmax(logits, temperature), y, temperature, alpha)

    return loss_fn


def teacher_runs(value) -> list[Path]:
    """post.distill.teacher_run: one run folder or a list of them ([] for none)."""
    if value is None:
        return []
    runs = value if isinstance(value, list | tuple) else [value]
    if not runs or any(not isinstance(r, str) or not r for r in runs):
        raise ConfigError(KEY, value, "a run folder or a non-empty list of run folders")
    return [Path(r) for r in runs]


def dataset_settings(run_cfg: dict) -> dict:
    """What a run's data is, wherever it was read from."""
    dataset = without_data_locations(run_cfg).get("dataset")
    return dataset if isinstance(dataset, dict) else {}


def _check_model_cfg(cfg: dict, model_cfg: dict, key: str) -> None:
    """Validate a stage's model config (student/teacher) with the run's own model checks."""
    if not isinstance(model_cfg, dict) or ("name" not in model_cfg and "_target_" not in model_cfg):
        raise ConfigError(key, model_cfg, "a model config such as {name: mlp, hidden: [32]}")
    try:
        check_model(model_cfg, datasets.input_shape(cfg["dataset"]), datasets.num_classes(cfg["dataset"]))
    except ConfigError as e:
        raise ConfigError(e.key.replace("model", key, 1), e.value, e.allowed) from None


def check(cfg: dict, model_cfg: dict) -> dict:
    """post.distill's models and teacher runs (its values: config/stages.py); the next stage receives the student."""
    s = cfg["post"]["distill"]
    _check_model_cfg(cfg, s["student"], "post.distill.student")
    if s.get("teacher") is not None:
        _check_model_cfg(cfg, s["teacher"], "post.distill.teacher")
    first: tuple[Path, dict] | None = None  # the first teacher and its dataset settings
    for run_dir in teacher_runs(s["teacher_run"]):
        if not run_dir.is_dir():
            raise ConfigError(KEY, str(run_dir), "an existing run folder (not found)")
        shape, classes = datasets.input_shape(cfg["dataset"]), datasets.num_classes(cfg["dataset"])
        if shape is None:  # your own data: the teacher run recorded the shape its model was built for
            shape, classes = trained_shape(run_dir, read_run_config(run_dir, KEY, trusted_targets(cfg)))
        _, run_cfg = load_run_model(run_dir, shape, classes, trusted_targets(cfg))
        if run_cfg["dataset"]["name"] != cfg["dataset"]["name"]:
            raise ConfigError(KEY, str(run_dir),
                              f"a run on this run's dataset {cfg['dataset']['name']} (it trained on {run_cfg['dataset']['name']})")
        data_cfg = dataset_settings(run_cfg)
        if first is None:
            first = run_dir, data_cfg
        elif data_cfg != first[1]:  # an ensemble of teachers of different data is no one workload's teacher
            differ = sorted(k for k in data_cfg.keys() | first[1].keys() if data_cfg.get(k) != first[1].get(k))
            raise ConfigError(KEY, str(run_dir), f"teachers of one dataset: its dataset settings differ from "
                                                 f"{first[0]}'s in {', '.join(differ)}")
    return s["student"]


def run(ctx: StageContext, model: nn.Module, model_cfg: dict) -> StageResult:
    s, cfg, data = ctx.cfg["post"]["distill"], ctx.cfg, ctx.data
    runs = teacher_runs(s["teacher_run"])
    if runs:
        loaded = [load_run_model(r, data.input_shape, data.num_classes, trusted_targets(cfg)) for r in runs]
        teachers = [m.to(ctx.device).eval() for m, _ in loaded]
        if len(runs) == 1:
            info_teacher = {"source": f"run {runs[0]}", "model": loaded[0][1]["model"]}
        else:
            info_teacher = {"source": f"ensemble of {len(runs)} runs (mean of their softmaxes)",
                            "members": [{"run": str(r), "model": c["model"], **ctx.test(m)}
                                        for r, (m, c) in zip(runs, loaded, strict=True)]}
    elif s.get("teacher") is not None:
        torch.manual_seed(cfg["seed"])
        teacher = make_model({**cfg, "model": s["teacher"]}, data.input_shape, data.num_classes).to(ctx.device)
        ctx.fit(teacher, s["teacher_epochs"], {"stage": "distill", "role": "teacher"})
        teachers, info_teacher = [teacher], {"source": "trained in this stage", "model": s["teacher"]}
    else:
        teachers, info_teacher = [model], {"source": "the model this run trained", "model": model_cfg}
    whole = teachers[0] if len(teachers) == 1 else Ensemble(teachers)
    whole.eval()
    info: dict[str, Any] = {"teacher": {**info_teacher, "params": sum(p.numel() for p in whole.parameters()),
                                        **ctx.test(whole)}, "targets": s["targets"]}
    torch.manual_seed(cfg["seed"])
    student = make_model({**cfg, "model": s["student"]}, data.input_shape, data.num_classes).to(ctx.device)
    init = copy.deepcopy(student.state_dict())  # the baseline starts from the very same weights
    ctx.fit(student, s["epochs"], {"stage": "distill", "role": "student"},
            loss_fn=teacher_loss(teachers, s["temperature"], s["alpha"], s["targets"]))
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
