"""Continue a finished run: `nnopt train continue_from=<run folder> epochs=N`.

A NEW run folder starts from the parent's final checkpoint (weights, optimizer, scheduler, weight
averaging, batch-size policy, early stopping, every RNG, step counters and metrics so far: all a
resume restores) and trains to N epochs in total. Its config is the parent's with epochs=N; an
override that changes the experiment is refused (init_from starts from weights under new settings).

Where the schedule does not depend on the total (none, exp, step, multistep, plateau, inverse_sqrt,
cosine_restarts, linear with total_iters set, SWA, EMA with start=0, fixed / double / random batch
sizes) the continued run is the run trained to N from scratch, bit for bit. Where it does (cosine
with T_max = the epochs, onecycle, warmup_cosine, wsd, linear over the run, EMA's start fraction,
the ramp batch size), the plan the parent made is kept: the scheduler is not stepped past its end
(the LR stays at its final value), EMA keeps its first step, the ramp keeps its end size. One line
says so. A schedule whose LR ended at 0 is refused: the added epochs could not change the weights.

The parent folder is untrusted input: its config is read size-capped with its `_target_`s checked
against the allow-list, the checkpoint with torch.load(weights_only=True) after its checksum.
"""

from __future__ import annotations

import inspect
import logging
import math
from copy import copy
from pathlib import Path
from typing import Any

from nnopt_cli.config.build import locate
from nnopt_cli.config.checks import is_int
from nnopt_cli.errors import ConfigError
from nnopt_cli.store import layout
from nnopt_cli.store.checkpoint import (
    CheckpointError,
    config_diff,
    load_checkpoint,
    restore_checkpoint,
    safe_load,
)
from nnopt_cli.store.folder import RunDirError, atomic_write_bytes, read_summary, save_state_dict
from nnopt_cli.store.layout import NON_EXPERIMENT_KEYS, UNFINISHED, Status, experiment_config
from nnopt_cli.store.targets import check_config_targets, trusted_targets
from nnopt_cli.store.untrusted import UntrustedFileError, load_config

log = logging.getLogger("nnopt")

KEY = "continue_from"
# keys a continued run may set to its own value: the total, the parent, and how the run is driven
FREE_KEYS = ("epochs", KEY, *NON_EXPERIMENT_KEYS)
# what the new summary.json copies from the parent's (numbers and strings only)
PARENT_SUMMARY_KEYS = ("config_sha", "status", "epochs", "test/acc", "test/loss", "best/val/acc",
                       "best/val/epoch", "train_time_s", "finished_at")
# the configured LR this small a fraction of the starting one: the added epochs would change nothing
ZERO_LR = 1e-12


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("~+").split("@")[0].replace("/", ".")


def _lookup(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<missing>"
        node = node[part]
    return node


def _short(v: Any) -> str:
    if isinstance(v, dict):
        v = v.get("name", v.get("_target_", v))
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def parent_config(folder: Path, current: dict, overrides: list[str]) -> dict:
    """The parent's own config (.hydra/config.yaml), read as untrusted input; one line if it is not
    a run folder nnopt can read, or names a `_target_` this command did not."""
    path = folder / ".hydra" / "config.yaml"
    try:
        saved = load_config(path)
    except FileNotFoundError:
        raise ConfigError(KEY, str(folder), f"a run folder made by nnopt train ({path} is missing)") from None
    except UntrustedFileError as e:
        raise RunDirError(str(e)) from None
    except (ValueError, OSError) as e:
        raise RunDirError(f"{path} is corrupt ({str(e).removeprefix(str(path) + ': ')[:160]})") from None
    if not is_int(saved.get("epochs")) or not isinstance(saved.get("model"), dict):
        raise RunDirError(f"{path} is corrupt (no epochs or model): the parent's experiment is unknown")
    check_config_targets(saved, trusted_targets(current, overrides=overrides), str(path))
    return saved


def continue_config(spec: Any, current: dict, overrides: list[str]) -> dict:
    """The config of a run continuing the run folder `spec` to current["epochs"] epochs: the parent's
    config with that total, refusing (one line) what cannot be continued. `current` is what this
    command composed; `overrides` its command line."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(KEY, spec, "the path of a completed run folder")
    folder, where = Path(spec), spec
    if not folder.is_dir():
        raise ConfigError(KEY, where, "a run folder made by nnopt train (not found)")
    if current.get("resume") is not None:
        raise ConfigError(KEY, where, "not with resume= (resume continues a run in its own folder; "
                                      "continue_from starts a new one from a finished run)")
    if not any(_key_of(o) == "epochs" for o in overrides):
        raise ConfigError("epochs", current.get("epochs"), f"given with {KEY}: the total to train to, e.g. epochs=20")
    saved = parent_config(folder, current, overrides)
    summary = read_summary(folder) or {}
    status = summary.get("status", "unknown")
    if status != Status.COMPLETED:
        how = f"; continue it in its own folder with resume={where}" if status in (Status.INTERRUPTED, *UNFINISHED) else ""
        raise ConfigError(KEY, where, f"a completed run (its status is {status}){how}")
    if summary.get("stop_reason", "max_epochs") != "max_epochs":
        raise ConfigError(KEY, where, f"a run that trained all its epochs (it stopped at epoch "
                                      f"{summary.get('epochs')} by {summary.get('stop_reason')}); start a new "
                                      f"run from its weights with init_from={where}")
    if not (folder / layout.CHECKPOINT).is_file():
        raise ConfigError(KEY, where, "a run that kept its final checkpoint (this one kept no checkpoint.pt: "
                                      f"checkpoint.keep=none or checkpoint.every=0); start from its weights "
                                      f"with init_from={where} instead")
    parent_epochs, epochs = saved["epochs"], current["epochs"]
    if not is_int(epochs) or epochs <= parent_epochs:
        raise ConfigError("epochs", epochs, f"more than the {parent_epochs} epochs of {where} ({KEY} trains to "
                                            "this many epochs in total)")
    for o in overrides:
        key = _key_of(o)
        if key.split(".")[0] in FREE_KEYS:
            continue
        old, new = _lookup(saved, key), _lookup(current, key)
        if old != new:
            raise ConfigError(KEY, where, f"the override {o} would change the experiment (the run has "
                                          f"{key}={_short(old)}); a continued run keeps its parent's config: "
                                          f"to start from its weights with other settings use init_from={where}")
    sched, batch = saved.get("scheduler"), saved.get("batch_size")
    growth_instead = isinstance(batch, dict) and batch.get("instead_of_lr_decay")  # then no scheduler runs
    if isinstance(sched, dict) and total_dependent_scheduler(sched) and not growth_instead:
        refuse_ended_lr(folder)
    for k, v in current.items():
        if k not in saved or k in FREE_KEYS:
            saved[k] = v
    saved[KEY] = str(folder.resolve())  # the same parent whatever folder the run is later resumed from
    return saved


def _as_float(v: Any) -> float:
    return float(v.item() if hasattr(v, "item") else v)


def refuse_ended_lr(folder: Path) -> None:
    """A schedule planned for the parent's length keeps its final LR (see the module docstring):
    refuse when that LR is 0, since the added epochs could not change the weights."""
    path = folder / layout.CHECKPOINT
    try:
        groups = load_checkpoint(path)["trainer"]["optimizer"]["param_groups"]
        lrs = [_as_float(g["lr"]) for g in groups]
        start = max(abs(_as_float(g.get("initial_lr", g["lr"]))) for g in groups)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} is incomplete: no optimizer LR ({type(e).__name__})") from None
    if all(math.isfinite(v) and abs(v) <= ZERO_LR * start for v in lrs):
        raise ConfigError(KEY, str(folder), f"a run whose LR did not end at 0 (its scheduler, planned for its "
                                            f"length, ended at LR {max(lrs):.3g}, so the added epochs would not "
                                            f"change the weights); start from its weights with a schedule of "
                                            f"your own: init_from={folder}")


# ---------------------------------------------------------------------------- the run itself


def _parent_record(folder: Path, summary: dict) -> dict[str, Any]:
    kept = {k: summary[k] for k in PARENT_SUMMARY_KEYS
            if isinstance(summary.get(k), (int, float, str)) and not isinstance(summary.get(k), bool)}
    return {"run": str(folder), **kept}


def total_dependent_scheduler(sched: dict) -> bool:
    """Whether a scheduler's plan is made from the run's length (its LR at a step depends on the total)."""
    target = str(sched.get("_target_") or "")
    if not target:
        return False
    if target.rsplit(".", 1)[-1] == "CosineAnnealingLR":  # T_max: ${epochs}
        return True
    if "total_iters" in sched and sched["total_iters"] is None:  # LinearLR over the whole run
        return True
    if sched.get("interval") != "step":
        return False
    try:
        return "total_steps" in inspect.signature(locate("scheduler._target_", target)).parameters
    except (ConfigError, TypeError, ValueError):
        return False


class Continuation:
    """A run continuing a finished one: what its summary records, the plan it keeps, the restore."""

    def __init__(self, folder: Path, record: dict[str, Any]):
        self.folder, self.record = folder, record
        self.parent_epochs: int = record["epochs"]

    @classmethod
    def of(cls, cfg: dict, run_path: Path, resumed: bool) -> Continuation | None:
        """None for a run that continues nothing. A resumed continuation takes the parent's record
        from its own summary.json (the parent need not be there any more)."""
        spec = cfg.get(KEY)
        if spec is None:
            return None
        folder = Path(spec)
        own = (read_summary(run_path) or {}).get("continued_from") if resumed else None
        if isinstance(own, dict) and is_int(own.get("epochs")) and own.get("run") == str(folder):
            return cls(folder, {k: v for k, v in own.items() if k != "notes"})
        record = _parent_record(folder, read_summary(folder) or {})
        if not is_int(record.get("epochs")):
            raise ConfigError(KEY, spec, "a completed run folder made by nnopt train (its summary.json names no epochs)")
        return cls(folder, record)

    def keep_plan(self, cfg: dict, trainer) -> list[str]:
        """Before any state is loaded: keep what the parent planned from its length (see the
        module docstring); returns the one-line notes, also kept in the record."""
        notes = []
        m, n = self.parent_epochs, cfg["epochs"]
        sched = cfg["scheduler"]
        if trainer.scheduler is not None and total_dependent_scheduler(sched):
            trainer.scheduler = None  # the optimizer's LR, restored from the checkpoint, stays as it ended
            notes.append(f"{KEY}: scheduler '{sched.get('name', sched['_target_'])}' was planned for {m} epochs; "
                         f"continuing to {n} epochs keeps its end state (LR stays at its final value)")
        avg = cfg.get("averaging") or {}
        if trainer.averager is not None and avg.get("name") == "ema" and avg.get("start"):
            planned = copy(trainer.policy)
            planned.epochs = m
            trainer.averager.first_step = int(avg["start"] * planned.total_steps(trainer.n_train))
            notes.append(f"{KEY}: averaging 'ema' start={avg['start']} is a fraction of the {m}-epoch run: "
                         f"the average kept its first step ({trainer.averager.first_step})")
        if trainer.policy.policy == "ramp":
            notes.append(f"{KEY}: batch_size 'ramp' was planned for {m} epochs; continuing to {n} epochs keeps "
                         f"its end size ({trainer.policy.end})")
        for line in notes:
            log.warning("%s", line)
        self.record["notes"] = notes
        return notes

    def restore(self, cfg: dict, model, trainer, stopper) -> tuple[dict, dict]:
        """Load the parent's final checkpoint into the freshly built run; returns (checkpoint, progress)."""
        path = self.folder / layout.CHECKPOINT
        ckpt = load_checkpoint(path, train_samples=trainer.n_train)
        mine = {k: v for k, v in experiment_config(cfg).items() if k not in FREE_KEYS}
        theirs = {k: v for k, v in experiment_config(ckpt["config"]).items() if k not in FREE_KEYS}
        diff = config_diff(theirs, mine)
        if diff:
            raise CheckpointError(f"{path} was written by a different experiment than {self.folder}'s config "
                                  f"(they differ at {', '.join(diff[:5])})")
        if ckpt["epoch"] != self.parent_epochs or ckpt["progress"].get("epoch_elapsed_s"):
            raise CheckpointError(f"{path} is of epoch {ckpt['epoch']}, not the end of the run's "
                                  f"{self.parent_epochs} epochs")
        fresh = dict(vars(trainer.policy))  # the batch-size plan for the new total
        progress = restore_checkpoint({**ckpt, "config": cfg}, cfg, model, trainer, stopper, path)
        if trainer.policy.policy != "ramp":  # ramp keeps the parent's plan (its end size)
            vars(trainer.policy).update(fresh)
        return ckpt, progress

    def copy_init_model(self, run_path: Path) -> None:
        """The parent's starting weights (init_model.pt, for loss landscapes) are this run's too."""
        source = self.folder / layout.INIT_MODEL
        if not source.is_file():
            return
        state = safe_load(source, "model")
        if isinstance(state, dict):
            save_state_dict(run_path / layout.INIT_MODEL, state)


def write_hydra_config(subdir: Path, cfg: Any) -> None:
    """Replace <run>/<subdir>/config.yaml (Hydra wrote the composed defaults) with the run's own config."""
    from omegaconf import OmegaConf

    subdir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(subdir / "config.yaml", OmegaConf.to_yaml(cfg).encode())
