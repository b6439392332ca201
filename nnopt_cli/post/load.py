"""Models from run folders: an earlier run's trained model (distillation teacher) and a stage's
saved model (`load_stage_model`). A run folder is untrusted input: its config is read with limits
and no resolvers (untrusted.py), every `_target_` in it must be allowed (targets.py) before anything
is built, and weights load with weights_only=True after their checksum is verified.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from nnopt_cli import data as datasets
from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.models import make_model
from nnopt_cli.post import quantize as Q
from nnopt_cli.post.measure import load_state
from nnopt_cli.store import layout
from nnopt_cli.store.checkpoint import CheckpointError, safe_load, verify_checksum
from nnopt_cli.store.targets import check_config_targets
from nnopt_cli.store.untrusted import UntrustedFileError, load_config, summary_or_reason


def read_run_config(run_dir: Path, key: str, trusted=()) -> dict:
    """A run folder's .hydra/config.yaml, read as untrusted input: size-capped, no resolvers, and
    every `_target_` in it allowed (targets.py) before anything is built from it."""
    path = run_dir / layout.CONFIG
    try:
        cfg = load_config(path, folder=run_dir)
    except FileNotFoundError:
        raise ConfigError(key, str(run_dir), "a run folder holding .hydra/config.yaml (not found)") from None
    except (ValueError, UntrustedFileError, OSError) as e:
        raise ConfigError(key, str(run_dir), f"a run folder with a readable config ({path}: "
                                             f"{str(e).removeprefix(str(path) + ': ')[:150]})") from None
    check_config_targets(cfg, trusted, str(path))
    return cfg


def load_run_model(run_dir: Path, input_shape: tuple[int, ...], num_classes: int,
                   trusted=(), key: str = "post.distill.teacher_run") -> tuple[nn.Module, dict]:
    """The trained model of an earlier run folder (its .hydra/config.yaml rebuilds it, model.pt fills it).
    `trusted`: `_target_` names this invocation itself gave (targets.trusted_targets); `key`: the
    setting that named the folder, for error messages."""
    weights = run_dir / layout.MODEL
    run_cfg = read_run_config(run_dir, key, trusted)
    if not weights.is_file():
        raise ConfigError(key, str(run_dir), "a run folder holding model.pt (not found)")
    try:
        model = make_model(run_cfg, input_shape, num_classes)
        model.load_state_dict(safe_load(weights, "model"))
    except CheckpointError as e:  # corrupt, tampered with (checksum) or holding pickled code
        raise ConfigError(key, str(run_dir), f"a run folder with a usable model ({e})") from None
    except NnoptError:
        raise
    except Exception as e:  # a config of another shape, a state dict of another architecture...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(key, str(run_dir), f"a run folder with a usable model ({type(e).__name__}: {first})") from None
    return model, run_cfg


def trained_shape(run_dir: Path, cfg: dict) -> tuple[tuple[int, ...], int]:
    """The input shape and number of classes the run's model was built for: summary.json's `data`
    entry, or for a folder written before it, what the dataset's config says."""
    summary, _ = summary_or_reason(run_dir)
    entry = (summary or {}).get("data")
    try:
        return tuple(int(n) for n in entry["input_shape"]), int(entry["num_classes"])
    except (TypeError, KeyError, ValueError):
        shape = datasets.input_shape(cfg.get("dataset") or {})
        if shape is None:
            raise NnoptError(f"{run_dir}/summary.json does not say the input shape of the model "
                             "(the run did not finish loading its data)") from None
        return shape, datasets.num_classes(cfg["dataset"])


def load_stage_model(run_dir: str | Path, file: str = "model.pruned.pt", trusted=()) -> nn.Module:
    """Rebuild a stage's saved model from a run folder (config + summary.json + the weights file).

        model = load_stage_model("outputs/2026-01-01/12-00-00-000000", "model.quantized.pt")

    The folder is untrusted input: its config may only name allowed classes (targets.py) unless
    `trusted` lists them; a missing or corrupt file is one NnoptError line.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, "run_dir", trusted)
    try:
        summary, why = summary_or_reason(run_dir)
        if summary is None:
            raise ValueError(why)
        stages = [s for s in summary.get("stages", []) if isinstance(s, dict)]
        stage = next((s for s in stages if s.get("file") == file), None)
        if stage is None and file == layout.MODEL:  # the trained model itself, before any stage
            shape, num_classes = trained_shape(run_dir, cfg)
            return load_run_model(run_dir, shape, num_classes, trusted, key="run_dir")[0].eval()
        if stage is None:
            saved = ", ".join(str(s.get("file")) for s in stages if s.get("file")) or "none"
            raise NnoptError(f"{run_dir}/summary.json has no stage that saved {file} (stage files: {saved}; "
                             f"the trained model is {layout.MODEL})")
        shape = tuple(int(n) for n in stage["input_shape"])
        model_cfg, num_classes = stage["model"], int(stage["num_classes"])
    except (OSError, ValueError, UntrustedFileError, AttributeError, TypeError, KeyError) as e:
        raise NnoptError(f"{run_dir}/summary.json has no usable stage entry for {file} "
                         f"({type(e).__name__}: {str(e)[:120]})") from None
    check_config_targets({"model": model_cfg}, trusted, f"{run_dir}/summary.json")
    model = make_model({**cfg, "model": model_cfg}, shape, num_classes)
    if stage["name"] == "quantize":
        q = stage["settings"]
        model = Q.rebuild_quantized(model, q["method"], q["backend"], q["granularity"], shape, q.get("bits", 8),
                                     q.get("scheme", "symmetric"))
    verify_checksum(run_dir / file)
    model.load_state_dict(load_state(run_dir / file))
    return model.eval()
