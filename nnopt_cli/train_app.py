"""`nnopt train`: the Hydra application around the runner.

Hydra composes conf/train.yaml with the command-line overrides, makes the run folder and
writes .hydra/; this module turns that into a plain dict for the runner and turns errors into
one line and an exit status (single runs) or a failed job that the sweep survives (multirun).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nnopt_cli.config import conf_dir
from nnopt_cli.device import available_cores
from nnopt_cli.errors import NnoptError, want_traceback
from nnopt_cli.run_dir import write_json
from nnopt_cli.runner import RunContext, train

log = logging.getLogger("nnopt")


def parallel_jobs(hc) -> int:
    """How many jobs of this sweep share the machine (the joblib launcher runs n_jobs at once)."""
    launcher = hc.launcher
    if hc.mode == RunMode.MULTIRUN and "Joblib" in str(launcher.get("_target_", "")):
        n = launcher.get("n_jobs", -1) or -1
        return available_cores() if n < 0 else n
    return 1


def record_failure(run_dir: Path, exc: BaseException) -> None:
    """Keep what the run wrote so far and mark it failed, with the reason, in summary.json."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        summary = {}
    summary.update(status="failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if not isinstance(exc, NnoptError):
        summary["traceback"] = "".join(traceback.format_exception(exc))
    write_json(path, summary)


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="train")
def train_app(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
        summary = train(plain, RunContext(run_dir=run_dir, parallel_jobs=parallel_jobs(hc)))
    except Exception as e:
        record_failure(run_dir, e)
        if want_traceback():
            raise
        message = str(e).splitlines()[0] if isinstance(e, NnoptError) else f"{type(e).__name__}: {e}"
        print(f"nnopt: error: {message}", file=sys.stderr)
        if multirun:
            log.error("job %s failed: %s", hc.job.num, message)
            return math.nan  # the sweep goes on; the job's summary.json says failed
        if not isinstance(e, NnoptError):
            print("nnopt: the full traceback is in summary.json; set NNOPT_DEBUG=1 to print it", file=sys.stderr)
        raise SystemExit(e.exit_code if isinstance(e, NnoptError) else 1) from None
    if summary["status"] == "diverged" and not multirun:
        raise SystemExit(3)
    return summary.get("best/val/acc", math.nan)


def run(args: list[str]) -> None:
    """Run the Hydra app on `args` (everything after `nnopt train`)."""
    sys.argv = ["nnopt train", *args]
    train_app()
