"""logger=mlflow: a run's numbers in an MLflow tracking store, live (an optional extra).

    nnopt train logger=mlflow logger.mlflow.tracking_uri=sqlite:///mlflow.db    then    mlflow ui

One MLflow run per nnopt run, named by `name=` (else the run folder), tagged with `tags=` and the
run folder; params are the run's choices and overridden keys (as TensorBoard's HParams); metrics
are every number of each epoch's row at the optimizer step the epoch ended, and the final numbers.
The MLflow run's id is in the checkpoint, so a resumed run goes on in the same MLflow run. Only
rank 0 writes. MLflow's client API is used (no process-wide active run: sweeps stay apart).
"""

from __future__ import annotations

import time
from typing import Any

from nnopt_cli.compare.discover import flatten
from nnopt_cli.errors import NnoptError
from nnopt_cli.loggers.tensorboard import final_scalars, folder_hparams, scalars
from nnopt_cli.store.layout import Status
from nnopt_cli.training.observers import EpochInfo, Observer, RunInfo

INSTALL_HINT = "logger=mlflow needs the mlflow package, which is not installed: pip install 'nnopt[mlflow]' (or pip install mlflow)"
# MLflow's run statuses for nnopt's
END_STATUS = {Status.COMPLETED: "FINISHED", Status.INTERRUPTED: "KILLED", Status.PRUNED: "KILLED"}
MAX_PARAM = 500  # characters MLflow keeps of a param value


class MLflowLogger(Observer):
    def __init__(self, tracking_uri: str | None = None, experiment: str = "nnopt"):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise NnoptError(INSTALL_HINT) from None
        if not isinstance(experiment, str) or not experiment:
            raise NnoptError(f"invalid config: logger.mlflow.experiment={experiment!r}: an experiment name")
        self.client_class = MlflowClient
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client = None
        self.run_id: str | None = None  # in the checkpoint: a resume logs into the same MLflow run
        self.step = 0

    def on_run_start(self, run: RunInfo) -> None:
        if not run.write:
            return
        from mlflow.entities import Param

        self.client = self.client_class(self.tracking_uri)
        if self.run_id is not None:  # resumed: the MLflow run of the run's first start
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        cfg = run.cfg
        tags = {"nnopt.run_dir": str(run.run_dir), **{f"tag.{t}": "" for t in cfg.get("tags") or []}}
        self.run_id = self.client.create_run(exp_id, run_name=cfg.get("name") or run.run_dir.name, tags=tags).info.run_id
        hparams = folder_hparams(run.run_dir, flatten(cfg))
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:MAX_PARAM]) for k, v in hparams.items()])

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def on_epoch_end(self, epoch: EpochInfo) -> None:
        if self.client is None:
            return
        self.step = epoch.step
        self._log({"epoch": float(epoch.epoch), **scalars(epoch.row, skip=("epoch", "stage"))}, epoch.step)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        if self.client is None:
            return
        self._log(final_scalars(summary), self.step)
        self.client.set_terminated(self.run_id, END_STATUS.get(summary.get("status"), "FAILED"))
        self.client = None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id, self.step = state.get("run_id"), int(state.get("step", 0))
