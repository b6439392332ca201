"""`hydra/launcher=joblib` through nnopt: Hydra's joblib launcher, except that a worker killed mid-job
(SIGKILL, the out-of-memory killer) ends the sweep with one line and nnopt's sweep report, which
names the job that died, instead of joblib's TerminatedWorkerError traceback.

Hydra prints the traceback of any exception a launcher raises, so the launcher itself has to turn
it into an exit. The QuietJoblib callback (conf/train.yaml, hydra.callbacks) points the composed
launcher at this subclass before Hydra builds it; every joblib setting stays as it was.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from hydra_plugins.nnopt_launcher.fork_launcher import WORKER_DIED

try:  # Hydra's module (cheap to import: joblib itself is imported by launch, below)
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
except ImportError:  # hydra-joblib-launcher not installed: hydra/launcher=joblib does not compose either
    JoblibLauncher = None

JOBLIB_TARGET = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
QUIET_TARGET = f"{__name__}.QuietJoblibLauncher"


if JoblibLauncher is not None:
    class QuietJoblibLauncher(JoblibLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            # here, not at the top: Hydra imports every plugin module at start-up (`--help` and each
            # config error included), and joblib brings numpy with it
            from joblib.externals.loky.process_executor import TerminatedWorkerError

            try:
                return super().launch(job_overrides, initial_job_idx)
            except TerminatedWorkerError:  # the sweep report (nnopt_cli/cli/train.py) lists the dead job
                print(WORKER_DIED, file=sys.stderr, flush=True)
                raise SystemExit(1) from None


class QuietJoblib(Callback):
    """Before Hydra builds the sweep's launcher: Hydra's joblib launcher becomes QuietJoblibLauncher."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = config.hydra.get("launcher")
        if JoblibLauncher is not None and launcher is not None and launcher.get("_target_") == JOBLIB_TARGET:
            with read_write(launcher), open_dict(launcher):
                launcher["_target_"] = QUIET_TARGET
