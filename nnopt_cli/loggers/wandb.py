"""logger=wandb: a run's numbers as a Weights & Biases run, live (an optional extra).

    nnopt train logger=wandb    then, to upload:    wandb sync <run folder>/wandb/offline-run-*

Offline unless the user sets WANDB_MODE: the W&B run is written inside the run folder
(<run folder>/wandb/), so nothing leaves the machine by default and the run folder holds it all.
One W&B run per nnopt run, named by `name=` (else the run folder), tagged with `tags=`; its config
is the run's choices and overridden keys (as TensorBoard's HParams and MLflow's params); metrics
are every number of each epoch's row at the optimizer step the epoch ended, and the final numbers:
the same keys as the other loggers. The W&B run's id is in the checkpoint, so a resumed run goes on
in the same W&B run. Only rank 0 writes.
"""

from __future__ import annotations

import os
from typing import Any

from nnopt_cli.compare.discover import flatten
from nnopt_cli.errors import NnoptError
from nnopt_cli.loggers.tensorboard import final_scalars, folder_hparams, scalars
from nnopt_cli.store.layout import Status
from nnopt_cli.training.observers import EpochInfo, Observer, RunInfo

INSTALL_HINT = "logger=wandb needs the wandb package, which is not installed: pip install 'nnopt[wandb]' (or pip install wandb)"
# W&B's exit codes for nnopt's statuses: 0 marks the W&B run finished, anything else failed
EXIT_CODE = {Status.COMPLETED: 0, Status.INTERRUPTED: 130, Status.PRUNED: 0}


def wandb_mode() -> str:
    """offline, unless the user chose another mode with WANDB_MODE (online, disabled, ...)."""
    return os.environ.get("WANDB_MODE") or "offline"


class WandbLogger(Observer):
    def __init__(self, project: str = "nnopt", entity: str | None = None):
        try:
            import wandb
        except ImportError:
            raise NnoptError(INSTALL_HINT) from None
        if not isinstance(project, str) or not project:
            raise NnoptError(f"invalid config: logger.wandb.project={project!r}: a W&B project name")
        if entity is not None and (not isinstance(entity, str) or not entity):
            raise NnoptError(f"invalid config: logger.wandb.entity={entity!r}: a W&B entity name, or null")
        self.wandb, self.project, self.entity = wandb, project, entity
        self.run = None
        self.run_id: str | None = None  # in the checkpoint: a resume logs into the same W&B run
        self.step = 0

    def on_run_start(self, run: RunInfo) -> None:
        if not run.write:
            return
        cfg = run.cfg
        settings = self.wandb.Settings(console="off", silent=True, x_disable_stats=True, x_disable_meta=True,
                                       disable_git=True, disable_code=True)
        self.run = self.wandb.init(
            project=self.project, entity=self.entity, dir=str(run.run_dir), mode=wandb_mode(),
            name=cfg.get("name") or run.run_dir.name, tags=list(cfg.get("tags") or []),
            config=folder_hparams(run.run_dir, flatten(cfg)), id=self.run_id,
            resume="allow" if self.run_id else None, reinit="create_new", settings=settings)
        self.run_id = self.run.id

    def on_epoch_end(self, epoch: EpochInfo) -> None:
        if self.run is None:
            return
        self.step = epoch.step
        self.run.log({"epoch": float(epoch.epoch), **scalars(epoch.row, skip=("epoch", "stage"))}, step=epoch.step)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        final = final_scalars(summary)
        self.run.log(final, step=self.step)
        self.run.summary.update(final)
        self.run.finish(exit_code=EXIT_CODE.get(summary.get("status"), 1))
        self.run = None
        # finish() can return before W&B's service has written the run's last records: shutting the
        # service down waits for them, so the W&B run is whole when the nnopt run ends
        self.wandb.teardown()

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id, self.step = state.get("run_id"), int(state.get("step", 0))
