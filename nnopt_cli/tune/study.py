"""One `nnopt tune` process working on a study: ask -> compose -> train -> tell, until the study
holds n_trials finished trials.

    <study folder>/study.journal     the Optuna study (JournalStorage; optuna-dashboard reads it)
    <study folder>/<trial number>/   one ordinary run folder per trial (`nnopt compare` reads them)
    <study folder>/best.yaml, .json  the best trial so far: value, params, overrides, run folder
    <study folder>/pareto.json, .png with several objectives: the Pareto front (pareto.py)
    <study folder>/.locks/           who works on what (flock; the OS drops a dead process's locks)

Several processes may work on one study at once (a second terminal, Slurm jobs on a shared
disk). A process takes the study lock to count, to recover dead trials and to ask for a new one,
so no two of them overshoot n_trials, and holds its trial's lock while the trial trains. A RUNNING
trial whose lock is free belongs to a dead process (SIGKILL, a lost node): it is marked failed,
its run folder says so, and its parameters are queued again, so it is redone once and counted
once. Trials that finish count: completed, pruned (diverged runs are told as pruned: stopped
early, worse than any completed one) and failed with an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.store.folder import atomic_write_bytes, read_summary, record_failure, write_json
from nnopt_cli.store.layout import Status
from nnopt_cli.tune.objectives import Objective, describe
from nnopt_cli.tune.pruning import JOURNAL, journal_storage

log = logging.getLogger("nnopt")


def default_dir(study_name: str, base: list[str]) -> Path:
    """outputs/tune/<study name>-<hash of the base overrides>: commands on another config (say
    dataset=mnist1d instead of dataset=mnist) get studies of their own, the same command the same one."""
    key = hashlib.sha256(json.dumps(base).encode()).hexdigest()[:8]
    return Path("outputs") / "tune" / f"{study_name}-{key}"


class StudyFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        (self.path / ".locks").mkdir(parents=True, exist_ok=True)
        self.journal = self.path / JOURNAL

    @contextlib.contextmanager
    def locked(self):
        """The study lock: one process at a time counts, recovers and asks."""
        with open(self.path / ".locks" / "study.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def claim(self, number: int):
        """Hold trial `number`'s lock for as long as the returned file stays open."""
        f = open(self.path / ".locks" / f"trial-{number}.lock", "a")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return f

    def owner_alive(self, number: int) -> bool:
        try:
            with open(self.path / ".locks" / f"trial-{number}.lock", "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
                return False
        except BlockingIOError:
            return True

    def run_dir(self, number: int) -> Path:
        return self.path / str(number)


def counted(t) -> bool:
    """A finished trial that counts toward n_trials (a trial cut by a dead process does not: it is
    queued again)."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "error" in t.user_attrs)


def requeue(study: optuna.Study, t, folder: StudyFolder, why: str, announce: bool = True) -> None:
    """Mark a trial cut short failed (not counted) and queue its parameters again."""
    study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    run_dir = folder.run_dir(t.number)
    summary = read_summary(run_dir)  # the guarded reader: a FIFO or a corrupt file is None, never a hang
    if run_dir.is_dir() and (summary or {}).get("status") not in (Status.COMPLETED, Status.PRUNED):
        record_failure(run_dir, NnoptError(f"{why}; the trial was queued again"), status=Status.FAILED)
    if announce:
        log.warning("trial %d: %s; queued again", t.number, why)


def recover_dead(study: optuna.Study, folder: StudyFolder, mine: set[int]) -> int:
    """Fail and re-queue RUNNING trials whose process is gone. Call with the study lock held."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number not in mine and not folder.owner_alive(t.number):
            requeue(study, t, folder, f"the process running trial {t.number} died")
            n += 1
    return n


def finished_counts(trials) -> dict[str, int]:
    out = {"completed": 0, "pruned": 0, "failed": 0, "requeued": 0, "running": 0, "waiting": 0}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            out["completed"] += 1
        elif t.state == TrialState.PRUNED:
            out["pruned"] += 1
        elif t.state == TrialState.FAIL:
            out["failed" if counted(t) else "requeued"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
        elif t.state == TrialState.WAITING:
            out["waiting"] += 1
    return out


def best_record(study: optuna.Study, preset, base: list[str], objective: str, folder: StudyFolder) -> dict | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    best = study.best_trial
    overrides = [*base, *preset.trial_overrides(best.params)]
    return {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "objective": objective,
        "best_value": best.value,
        "best_params": dict(best.params),
        "best_trial": best.number,
        "run_dir": str(folder.run_dir(best.number)),
        "overrides": overrides,
        "retrain": "nnopt train " + " ".join(overrides),
        "trials": finished_counts(study.get_trials(deepcopy=False)),
    }


def write_best(folder: StudyFolder, record: dict) -> None:
    write_json(folder.path / "best.json", record)
    atomic_write_bytes(folder.path / "best.yaml", yaml.safe_dump(record, sort_keys=False).encode())


def trial_line(t, status: str, value: Any, seconds: float, params: dict) -> str:
    """`value`: the objective's number, or a list of them (one per objective)."""
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    if isinstance(value, list):
        v = " " + " ".join(f"{x:.4g}" for x in value)
    else:
        v = f" {value:.4f}" if isinstance(value, (int, float)) else ""
    return f"trial {t.number:>3}: {status:<9}{v} ({seconds:.1f} s) {shown}"


def drop_cut_record(path: Path) -> None:
    """A journal whose last record was cut (the disk filled during Optuna's append) ends without a
    newline; the next append would glue its record to the cut one and make the journal unreadable.
    Cut it back to its last whole record, under Optuna's own lock on the file."""
    from optuna.storages.journal import JournalFileSymlinkLock

    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) < len(data):
            os.truncate(path, len(whole))
            log.warning("%s ended in a record cut short (a full disk?); removed it (%d bytes)", path,
                        len(data) - len(whole))
    finally:
        lock.release()


def check_journal(path: Path) -> None:
    """One line for a journal Optuna could not replay: not a regular file (a FIFO would hang the
    study lock's holder) or a line that is not JSON (a hand edit, a disk that filled mid-line)."""
    if not path.exists():
        return
    if not path.is_file():
        raise NnoptError(f"{path} is not a regular file; refused to open the study")
    drop_cut_record(path)
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                json.loads(line)
            except ValueError:
                if line.endswith(b"\n"):  # an unfinished last line is a write cut short: Optuna skips it
                    raise NnoptError(f"{path} line {n} is not JSON ({line[:60]!r}); the study journal is "
                                     "corrupt: restore it or use another tune.dir") from None


def open_study(folder: StudyFolder, settings: dict, pruner, identity: dict, objs: list[Objective]) -> optuna.Study:
    """Create the study, or load it and check that it searches the same space on the same config.
    Directions and objectives are fixed when the study is made: others are refused, never mixed."""
    check_journal(folder.journal)
    try:
        had_study = folder.journal.exists() and settings["study_name"] in optuna.get_all_study_names(
            journal_storage(folder.journal))
        storage = journal_storage(folder.journal)
        if had_study:  # loaded, not created again: the journal gains no record from a refused rerun
            study = optuna.load_study(study_name=settings["study_name"], storage=storage, pruner=pruner)
        else:
            study = optuna.create_study(study_name=settings["study_name"], storage=storage,
                                        directions=[o.direction for o in objs], pruner=pruner, load_if_exists=True)
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError) as e:  # JSON lines, not Optuna records
        raise NnoptError(f"{folder.journal} cannot be replayed ({type(e).__name__}: {str(e)[:80]}); the study "
                         "journal is corrupt: restore it or use another tune.dir") from None
    made = [d.name.lower() for d in study.directions]
    if had_study and len(objs) == 1 and made != [objs[0].direction]:
        raise ConfigError("tune.direction", settings["direction"],
                          f"the study in {folder.path} was made to {' and '.join(made)} "
                          f"{settings['objective'] if len(made) == 1 else 'several objectives'}; rerun it as it "
                          "was made, or use another tune.dir")
    if had_study and len(objs) > 1 and made != [o.direction for o in objs]:
        names = study.metric_names or ["an objective"] * len(made)
        raise ConfigError("tune.objectives", describe(objs),
                          f"the study in {folder.path} was made to "
                          f"{' and '.join(f'{d} {n}' for d, n in zip(made, names, strict=False))}; rerun it as it "
                          "was made, or use another tune.dir")
    had = study.user_attrs.get("nnopt")
    if had is None:
        study.set_user_attr("nnopt", identity)
    elif not isinstance(had, dict):
        raise NnoptError(f"the study in {folder.path} has a malformed 'nnopt' attribute (a {type(had).__name__}, "
                         "not a mapping); it was not made by nnopt tune: use another tune.dir")
    elif had != identity:
        keys = [k for k in identity if had.get(k) != identity[k]]
        raise NnoptError(f"the study in {folder.path} was made with another {' and '.join(keys)} "
                         f"({json.dumps(had.get(keys[0]))[:150]}); rerun it as it was made, or use another tune.dir")
    if study.metric_names != [o.name for o in objs]:  # what optuna-dashboard calls the objectives
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.name for o in objs])
    return study
