"""logger=tensorboard: a run's numbers as TensorBoard event files in its own run folder, live.

    tensorboard --logdir outputs/multirun/<date>/<time>-...    every run of a sweep, by folder

One x-axis for everything, the optimizer step (as Lightning does), so that a resumed run can
drop the events written after its checkpoint (SummaryWriter's purge_step) and curves of runs
with different batch sizes stay honest about the work done. Every scalar is under a section, so
TensorBoard groups them and none sorts on its own before val/:

    step/loss, step/lr   every `every` optimizer steps: the only place the logger reads loss.item()
    train/, val/         the epoch's row at the step the epoch ended: train/loss, val/acc, and the
                         row's plain keys as train/lr, train/batch_size, train/grad_norm
    counters/            epoch, steps, total_steps, samples_seen, train_s, ... of that row
    diag/                the diagnostics, when on
    evals/val/...        `nnopt export` only: evals.jsonl's evaluations every eval_every_steps
    <run>/hparams/       the HParams session: the run's Hydra choices, overridden keys, name and
                         tags (at the start, so a running or pruned run is in the table too), its
                         status (at the end) and its final values as the table's metrics: test/acc,
                         best/val/acc, <stage>/<metric> of post-training stages, run/params, ...
                         Kept in their own sub-run so the run's charts hold curves, not one-point
                         charts, and the HParams table lists the final values, not every curve.

No experiment summary is written: TensorBoard builds the table from every session's settings
together, so runs of a sweep (or of several sweeps) may differ in their keys.

Only rank 0 writes (RunInfo.write). `nnopt export tensorboard` (export.py) writes the same events,
but the per-step ones, from finished run folders with the functions below.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from nnopt_cli.compare.discover import (
    SUMMARY_INFO_KEYS,
    SUMMARY_RENAME,
    Stage,
    flatten,
    is_number,
    stage_metrics,
)
from nnopt_cli.compare.files import hydra_choices, read_yaml
from nnopt_cli.config.checks import need_int
from nnopt_cli.errors import NnoptError
from nnopt_cli.optim.optimizers import current_lr
from nnopt_cli.store import layout
from nnopt_cli.store.layout import Status
from nnopt_cli.training.observers import EpochInfo, Observer, RunInfo, StepInfo

INSTALL_HINT = ("needs the tensorboard package, which is not installed: pip install tensorboard "
                "(make install brings it)")
# config keys shown in the HParams table even when no override set them
ALWAYS_HPARAMS = ("optimizer.lr", "seed", "epochs")


def summary_writer_class(what: str = "logger=tensorboard"):
    """torch's SummaryWriter, or one line saying how to install TensorBoard."""
    try:
        import tensorboard  # noqa: F401  (torch's own message for a missing package is a paragraph)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NnoptError(f"{what} {INSTALL_HINT}") from None
    return SummaryWriter


# ---------------------------------------------------------------------------- what gets written


HPARAMS_RUN = "hparams"  # the sub-run of the HParams session and the final values
# a metrics row's plain keys that count work done; the other plain keys (lr, batch_size, grad_norm,
# ...) describe training and go under train/
COUNTER_KEYS = frozenset({"epoch", "steps", "total_steps", "samples_seen", "forward_passes", "backward_passes",
                          "train_s", "time_s"})


def section(name: str, plain: str = "train") -> str:
    """The tag of a value: a name with a section (val/acc, diag/x) as it is; a plain one under
    counters/ (a count of work done) or `plain`."""
    if "/" in name:
        return name
    return f"counters/{name}" if name in COUNTER_KEYS else f"{plain}/{name}"


def scalars(values: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    """The finite numbers of a (nested) row, by slash-joined name: {"diag": {"x": 1}} -> diag/x."""
    flat = flatten({k: v for k, v in values.items() if k not in skip})
    return {k.replace(".", "/"): float(v) for k, v in flat.items() if is_number(v) and math.isfinite(v)}


def epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    """An epoch row's numbers by tag, each under its section."""
    return {section(k): v for k, v in scalars(row, skip=("stage",)).items()}


NOT_RESULTS = ("data",)  # the summary's record of the data's shape, for loading the model back


def final_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """A summary's numbers under the names `nnopt compare` gives them, stage results included; a
    plain name (params, flops, epochs_run, train_time_s) under run/."""
    out = {SUMMARY_RENAME.get(k, k): v for k, v in summary.items()
           if k not in SUMMARY_INFO_KEYS and k not in NOT_RESULTS}
    for i, st in enumerate(summary.get("stages") or []):
        if isinstance(st, dict):
            stage = Stage(str(st.get("name") or f"stage{i + 1}"), {}, {}, st.get("after") or {})
            out.update(stage_metrics(stage))
    return {k if "/" in k else f"run/{k}": v for k, v in scalars(out).items()}


def hparam_value(v: Any) -> bool | int | float | str:
    if isinstance(v, (bool, int, float, str)):
        return v
    return "null" if v is None else json.dumps(v)


def run_hparams(flat_cfg: dict[str, Any], choices: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The settings that tell a sweep's runs apart: each config group's choice, every key an
    override set (what a sweep varies) and a few always-interesting keys."""
    out = {str(g): hparam_value(v) for g, v in choices.items() if v is not None}
    keys = [*(k for k in layout.LABEL_KEYS if flat_cfg.get(k)), *ALWAYS_HPARAMS]  # name=, tags= when given
    for o in overrides:
        key = str(o).split("=", 1)[0].lstrip("~+").split("@")[0].replace("/", ".")
        if not key.startswith("hydra"):
            keys.append(key)
    for k in keys:
        if k in flat_cfg and k not in out:
            out[k] = hparam_value(flat_cfg[k])
    return out


def folder_hparams(run_dir: Path, flat_cfg: dict[str, Any], choices: dict[str, Any] | None = None) -> dict:
    """run_hparams from a run folder's .hydra/ files (hydra.yaml's choices, overrides.yaml)."""
    if choices is None:
        choices = hydra_choices(run_dir / layout.HYDRA_CONFIG)
    overrides, _ = read_yaml(run_dir / layout.OVERRIDES)
    return run_hparams(flat_cfg, choices, overrides if isinstance(overrides, list) else [])


def _hparams_summary(tag: str, **plugin_data):
    """A summary for the HParams plugin (tensorboard's own summary helpers need TensorFlow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **plugin_data)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                  content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def write_session_start(writer, hparams: dict[str, Any]) -> None:
    """The run's settings as an HParams session. No experiment summary: TensorBoard then builds
    the table from every run's settings together, so runs of a sweep may differ in their keys."""
    from tensorboard.plugins.hparams import metadata
    from torch.utils.tensorboard.summary import hparams as torch_hparams

    start = torch_hparams(hparams, {})[1].value[0].metadata.plugin_data.content
    info = metadata.parse_session_start_info_plugin_data(start)
    info.start_time_secs = time.time()
    writer.file_writer.add_summary(_hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=info))


def write_session_end(writer, status: str) -> None:
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    code = {Status.COMPLETED: api_pb2.STATUS_SUCCESS, Status.FAILED: api_pb2.STATUS_FAILURE,
            Status.DIVERGED: api_pb2.STATUS_FAILURE}.get(status, api_pb2.STATUS_UNKNOWN)
    info = plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=time.time())
    writer.file_writer.add_summary(_hparams_summary(metadata.SESSION_END_INFO_TAG, session_end_info=info))


def write_epoch(writer, row: dict[str, Any], step: int) -> None:
    for tag, value in epoch_scalars(row).items():
        writer.add_scalar(tag, value, step)


EVAL_KEYS = ("val/loss", "val/acc")


def write_evals(writer, rows: list[dict[str, Any]], steps: list[int]) -> None:
    """evals.jsonl's evaluations (every eval_every_steps steps and at epoch ends) as evals/val/...,
    apart from the epoch rows' val/ curves."""
    for row, step in zip(rows, steps, strict=True):
        for key in EVAL_KEYS:
            v = row.get(key)
            if is_number(v) and math.isfinite(v):
                writer.add_scalar(f"evals/{key}", float(v), step)


def write_final(hp_writer, summary: dict[str, Any], step: int) -> None:
    """The final values as the HParams session's metrics, then its end (with the run's status)."""
    for tag, value in final_scalars(summary).items():
        hp_writer.add_scalar(tag, value, step)
    hp_writer.add_text("status", str(summary.get("status", "unknown")), step)
    write_session_end(hp_writer, str(summary.get("status", "unknown")))


# ---------------------------------------------------------------------------- the live logger


class TensorBoardLogger(Observer):
    """Writes the run's numbers as they come (see the module docstring)."""

    def __init__(self, every: int | None = None, flush_secs: int = 10):
        if every is not None:
            need_int("logger.tensorboard.every", every, 1)
        need_int("logger.tensorboard.flush_secs", flush_secs, 1)
        self.writer_class = summary_writer_class()  # a missing package fails here, before any data
        self.every, self.flush_secs = every, flush_secs
        self.writer = None
        self.hp_writer = None  # the HPARAMS_RUN sub-run
        self.step = 0  # the last optimizer step seen; in the checkpoint, so a resume drops later events

    def on_run_start(self, run: RunInfo) -> None:
        if not run.write:  # DDP ranks other than 0
            return
        if self.every is None:
            self.every = run.cfg.get("log_every", 50)
        # after a resume, events past the checkpoint (a killed run wrote them) are dropped by readers
        purge = self.step + 1 if run.resumed_epoch or self.step else None
        self.writer = self.writer_class(log_dir=str(run.run_dir), purge_step=purge, flush_secs=self.flush_secs)
        self.hp_writer = self.writer_class(log_dir=str(run.run_dir / HPARAMS_RUN), flush_secs=self.flush_secs)
        write_session_start(self.hp_writer, folder_hparams(run.run_dir, flatten(run.cfg)))
        self.hp_writer.flush()  # a running run is in the table at once

    def after_step(self, step: StepInfo) -> None:
        if self.writer is None:
            return
        self.step = step.step
        if step.step % self.every == 0:
            self.writer.add_scalar("step/loss", step.loss.item(), step.step)  # the one device sync
            self.writer.add_scalar("step/lr", current_lr(step.optimizer), step.step)

    def on_epoch_end(self, epoch: EpochInfo) -> None:
        if self.writer is None:
            return
        self.step = epoch.step
        write_epoch(self.writer, epoch.row, epoch.step)
        self.writer.flush()  # a live view sees every epoch as it ends

    def on_run_end(self, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        write_final(self.hp_writer, summary, self.step)
        self.hp_writer.flush()
        self.writer.flush()

    def close(self) -> None:
        for w in (self.writer, self.hp_writer):
            if w is not None:
                w.close()
        self.writer = self.hp_writer = None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
