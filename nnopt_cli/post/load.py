"""Models from run folders: an earlier run's trained model (distillation teacher) and a stage's
saved model (`load_stage_model`). Configs and weights come from disk: weights load with
weights_only=True, and models are built only by nnopt's own builders.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.models import make_model
from nnopt_cli.post import quantize as Q
from nnopt_cli.post.measure import load_state


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
