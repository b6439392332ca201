"""Sweep job folders named by what the job is, not by its position in the grid.

`hydra.sweep.subdir: ${nnopt_job_dir:${hydra.overrides.task},${hydra.sweep.dir}}` (conf/train.yaml):
a job's identity is its task overrides, parsed (so `optimizer.lr=1e-3` and `optimizer.lr=0.001` are
one job), without the keys that do not change what the run computes (IGNORED), sorted (so the order
on the command line does not matter). Growing, shrinking or reordering a grid therefore keeps every
job's folder, and `skip_completed=true` runs only the jobs that are new.

The folder is the identity itself when it is short and plain (`optimizer=adam,seed=2`), otherwise
`job-<hash>` (its .hydra/overrides.yaml and the sweep report say which job it is); a job without
overrides runs in `defaults`. Readable names hold '=', hashed ones never do: two identities never
share a folder.

`threads` and `device` stay part of the identity: the config fingerprint that `skip_completed`
checks includes them (a different thread count changes float sums), and a sweep over them
(`threads=1,4`) compares runs that must not share a folder.

A sweep folder of an older nnopt has job folders named by number (0, 1, ...): a job whose identity
matches the recorded overrides of one of them (.hydra/overrides.yaml) runs in that folder, so a
rerun with skip_completed skips or resumes it instead of running it a second time elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from nnopt_cli.store.folder import read_summary
from nnopt_cli.store.layout import Status
from nnopt_cli.store.untrusted import CONFIG_MAX_BYTES, load_yaml, read_text

# keys that change how a run is kept or shown, not what it computes (resume stays: a sweep refuses it,
# and a refused job must not open the folder of the run it names)
IGNORED = ("skip_completed", "checkpoint", "logger")
MAX_NAME = 100
DEFAULTS = "defaults"
_PLAIN = re.compile(r"[A-Za-z0-9_.-]+=[A-Za-z0-9_.+-]+")  # no ',' '=' '/' in a value: names stay unambiguous
_DONE = (Status.COMPLETED, Status.DIVERGED)


def identity(overrides: Iterable[str]) -> tuple[str, ...]:
    """What a sweep job is: its overrides, normalised and sorted, without IGNORED keys."""
    lines = []
    for o in OverridesParser.create().parse_overrides([str(x) for x in overrides]):
        key = o.key_or_group
        if o.is_hydra_override() or re.split(r"[./]", key)[0] in IGNORED:
            continue
        key += f"@{o.package}" if o.package else ""
        if o.is_delete():
            lines.append(f"~{key}" if o.value() is None else f"~{key}={o.get_value_element_as_str()}")
        else:  # `+key=v` and `key=v` make the same config
            lines.append(f"{key}={o.get_value_element_as_str()}")
    return tuple(sorted(lines))


def folder_name(ident: tuple[str, ...]) -> str:
    if not ident:
        return DEFAULTS
    name = ",".join(ident)
    if len(name) <= MAX_NAME and all(_PLAIN.fullmatch(line) for line in ident):
        return name
    return "job-" + hashlib.sha256("\n".join(ident).encode()).hexdigest()[:12]


def recorded_identity(job_folder: Path) -> tuple[str, ...] | None:
    """The identity a job folder's .hydra/overrides.yaml records; None when unreadable (untrusted input)."""
    path = job_folder / ".hydra" / "overrides.yaml"
    try:
        loaded = load_yaml(read_text(path, CONFIG_MAX_BYTES), str(path))
        if not isinstance(loaded, list):
            return None
        return identity(str(o) for o in loaded)
    except Exception:  # missing, corrupt or not overrides: the folder tells nothing
        return None


# sweep dir -> {identity: ordinal folder}; ordinal folders are never made any more, so one scan per
# sweep and process is enough (SweepReport clears it when a multirun starts)
_ORDINAL: dict[str, dict[tuple[str, ...], str]] = {}


def ordinal_jobs(sweep_dir: Path) -> dict[tuple[str, ...], str]:
    """Job folders an older nnopt named by number, by recorded identity; where an identity was run
    twice, the first folder holding a finished run."""
    key = os.path.realpath(sweep_dir)
    if key in _ORDINAL:
        return _ORDINAL[key]
    found: dict[tuple[str, ...], str] = {}
    try:
        names = sorted((e.name for e in os.scandir(sweep_dir) if e.name.isdigit() and e.is_dir()), key=int)
    except OSError:
        names = []
    for name in names:
        ident = recorded_identity(sweep_dir / name)
        if ident is None:
            continue
        if ident not in found or (_status(sweep_dir / found[ident]) not in _DONE
                                  and _status(sweep_dir / name) in _DONE):
            found[ident] = name
    _ORDINAL[key] = found
    return found


def _status(folder: Path) -> str | None:
    summary = read_summary(folder)
    return summary.get("status") if summary else None


def forget_scans() -> None:
    _ORDINAL.clear()


def job_dir(overrides, sweep_dir) -> str:
    """The `nnopt_job_dir` resolver: the folder (below the sweep dir) of the job with these overrides."""
    overrides = [str(o) for o in (overrides or [])]
    try:
        ident = identity(overrides)
    except Exception:  # Hydra parsed them already; never let a resolver error stop the sweep
        return "job-" + hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:12]
    return ordinal_jobs(Path(str(sweep_dir))).get(ident) or folder_name(ident)
