"""Per-epoch pruning of an `nnopt tune` trial: an observer of the training loop.

After each epoch it reports the monitored metric of the epoch's row (val/acc) to the trial and
asks the study's pruner; when the pruner says so it raises StopRun("pruned"), and the run ends
with status `pruned` in its summary.json. The observer is named in the trial's config
(`observers.tune`) with plain values only: the study's name, the metric and the pruner's settings;
the trial is the run folder's name and the journal sits next to it. It opens the journal itself,
so the trial could run in any process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nnopt_cli.errors import NnoptError
from nnopt_cli.store.layout import Status
from nnopt_cli.training.observers import EpochInfo, Observer, RunInfo, StopRun
from nnopt_cli.tune.samplers import make_pruner

JOURNAL = "study.journal"  # in the study folder: `optuna-dashboard <study folder>/study.journal`


def journal_storage(path: Path | str):
    """The study's storage: Optuna's journal in one append-only file (no database server). Several
    processes may share it; the file backend locks it for each write."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


class TrialPruner(Observer):
    """Reports `monitor` after each epoch to trial <run folder name> of the study whose journal
    sits next to the run folder (<study folder>/<trial number>/), and stops the run when pruned.
    The config node is the same for every trial, so `nnopt compare` shows no column for it."""

    def __init__(self, study: str, monitor: str, pruner: dict[str, Any], journal: str | None = None):
        self.study_name, self.monitor, self.pruner_cfg, self.journal = study, monitor, dict(pruner), journal
        self.trial = None
        self.number = -1

    def on_run_start(self, run: RunInfo) -> None:
        import optuna

        if not run.run_dir.name.isdigit():
            raise NnoptError(f"observers.tune prunes nnopt tune trials: {run.run_dir} is not a trial folder "
                             "(<study folder>/<trial number>)")
        self.number = int(run.run_dir.name)
        journal = self.journal or run.run_dir.parent / JOURNAL
        study = optuna.load_study(study_name=self.study_name, storage=journal_storage(journal),
                                  pruner=make_pruner(self.pruner_cfg))
        frozen = study.get_trials(deepcopy=False)[self.number]
        # a finished trial (its run resumed by hand with nnopt train resume=...) is not reported to
        if not frozen.state.is_finished():
            self.trial = optuna.Trial(study, frozen._trial_id)

    def on_epoch_end(self, epoch: EpochInfo) -> None:
        value = epoch.row.get(self.monitor)
        if self.trial is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return  # a diverged epoch is the runner's to handle
        self.trial.report(float(value), epoch.epoch)
        if self.trial.should_prune():
            raise StopRun(Status.PRUNED, f"trial {self.number} pruned by the {self.pruner_cfg.get('name')} pruner "
                                    f"after epoch {epoch.epoch} ({self.monitor}={value:.4g})")
