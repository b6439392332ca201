"""nnopt: a config-driven experiment runner for neural-network optimization techniques.

From Python (a notebook, a script), two functions:

    summary = nnopt_cli.train(["optimizer=adam", "epochs=3"])   # exactly `nnopt train optimizer=adam epochs=3`
    run = nnopt_cli.load_run(summary["run_dir"])                 # run.model, run.config, run.summary
    pruned = nnopt_cli.load_run(summary["run_dir"], stage="prune").model

`import nnopt_cli` stays cheap: torch, Hydra and the rest load when a function is first called.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

__version__ = "0.1.0"


class LoadedRun(NamedTuple):
    """A run folder's model (in eval mode, on the CPU), its config (.hydra/config.yaml) and its summary.json."""

    model: Any  # torch.nn.Module
    config: dict
    summary: dict


def load_run(folder: str | Path, stage: str | None = None, trust: Iterable[str] = ()) -> LoadedRun:
    """The trained model of a run folder, or with `stage` the model a post-training stage saved
    (`prune`, `quantize`, `distill`, or its file name such as `model.pruned.pt`).

    The folder is read as untrusted input: no pickles, checksums verified, and its config may
    only name nnopt's and torch's own classes. A model class of your own (model=custom) must be
    named in `trust`, as you would name it on the command line: trust=["my_pkg.nets.MyNet"].
    Errors are one-line nnopt_cli.errors.NnoptError.
    """
    from nnopt_cli.errors import NnoptError
    from nnopt_cli.post import STAGES
    from nnopt_cli.post.load import load_stage_model, read_run_config
    from nnopt_cli.store import layout
    from nnopt_cli.store.untrusted import summary_or_reason

    folder = Path(folder)
    trusted = set(trust)
    config = read_run_config(folder, "run_dir", trusted)
    summary, why = summary_or_reason(folder)
    if summary is None:
        raise NnoptError(f"{folder}/{layout.SUMMARY}: {why}")
    if stage is None:
        file = layout.MODEL
    elif stage in STAGES:
        file = STAGES[stage].OUTPUT_FILE
    elif isinstance(stage, str) and stage.endswith(".pt"):
        file = stage
    else:
        raise NnoptError(f"load_run: stage={stage!r}: one of {', '.join(STAGES)} or a stage's file name "
                         "(model.pruned.pt, ...)")
    return LoadedRun(load_stage_model(folder, file, trusted), config, summary)


def train(overrides: Sequence[str] = (), run_dir: str | Path | None = None, quiet: bool = False) -> dict:
    """Run `nnopt train <overrides>` and return its summary.json, with `run_dir` (the run folder) added.

    It is the command itself, in a child process: the same checks, folder, files and exit
    statuses, and nothing of this process (its random state, threads, signal handlers) changes.
    The run folder is `run_dir`, else one under ./outputs/ named like the command's. Its output
    is printed here unless `quiet`. A config the command refuses, or a run that fails, raises
    NnoptError with the command's one-line message; a diverged or interrupted run returns its
    summary (see its `status`). Functions and classes named by `_target_` must be importable
    from a module (not defined in a notebook cell).
    """
    import os
    import secrets
    import subprocess
    import sys
    import time

    from nnopt_cli.errors import NnoptError
    from nnopt_cli.store.folder import read_summary

    args = [str(o) for o in overrides]
    if any(a in ("-m", "--multirun") or a.startswith(("-", "hydra.run.dir=")) for a in args):
        raise NnoptError("train: overrides only (key=value); one run per call, its folder given as run_dir=")
    if run_dir is None:  # the command's own naming: time + pid + random suffix
        now = time.time()
        stamp = time.strftime("%H-%M-%S", time.localtime(now)) + f"-{int(now % 1 * 1e6):06d}"
        run_dir = Path("outputs") / time.strftime("%Y-%m-%d", time.localtime(now)) / \
            f"{stamp}-{os.getpid()}-{secrets.token_hex(2)}"
    run_dir = Path(run_dir).absolute()
    quoted = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
    # the modules this process can import (a notebook's folder, an installed package) the child can too
    path = os.pathsep.join([p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen([sys.executable, "-m", "nnopt_cli", "train", *args, f"hydra.run.dir='{quoted}'"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    errors = []
    try:
        for line in proc.stdout:  # echoed through sys.stdout, so a notebook shows it
            if line.startswith("nnopt: error:"):
                errors.append(line.removeprefix("nnopt: error:").strip())
            if not quiet:
                sys.stdout.write(line)
        code = proc.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C: it saves a checkpoint and exits
        proc.wait()
        raise
    summary = read_summary(run_dir)
    if summary is None or (code not in (0, 3, 130, 143)):
        message = errors[0] if errors else f"nnopt train exited with status {code}"
        raise NnoptError(f"train: {message}")
    return {**summary, "run_dir": str(run_dir)}


__all__ = ["LoadedRun", "__version__", "load_run", "train"]
