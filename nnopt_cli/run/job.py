"""A job's run folder: the parts of `nnopt train` that make a folder the job's own before the run.

- refuse_reuse: a fresh run never replaces another run's files (a fixed hydra.run.dir reused);
  refuse_reused_run_dir checks a `hydra.run.dir=` of the command line before Hydra touches the folder;
- discard_unused_folder: a config refused before training leaves no folder that reads as a run;
- write_hydra_files: nnopt, not Hydra, writes .hydra/ once the folder is locked (run_lock.py) and
  known to be the job's, so a job that is skipped or refused leaves the earlier .hydra/ as it was;
- SetupSignals: SIGTERM / Ctrl-C outside the training loop become an interrupt the app records;
- keep_recorded_threads: a resumed run keeps the thread count it ran with;
- resume_config: `resume=`'s config, read from the folder as untrusted input: every file the run
  reads back or appends to checked first, data locations from the user's own config, and the
  checkpoint checked against the config before anything of it is built.
- link_latest / unlink_latest: outputs/latest, a link to the last single run's folder.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from nnopt_cli.config.overrides import INFO_FLAGS
from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.store import layout
from nnopt_cli.store.checkpoint import CheckpointError, config_diff, load_checkpoint
from nnopt_cli.store.folder import RunDirError, atomic_write_files, read_summary
from nnopt_cli.store.layout import NON_EXPERIMENT_KEYS, experiment_config
from nnopt_cli.store.lock import LOCK_FILE
from nnopt_cli.store.targets import check_config_targets, trusted_targets
from nnopt_cli.store.untrusted import (
    CONFIG_MAX_BYTES,
    DATA_LOCATION_KEYS,
    METRICS_MAX_BYTES,
    SIDE_FILE_MAX_BYTES,
    SUMMARY_MAX_BYTES,
    UntrustedFileError,
    check_run_files,
    load_config,
    without_data_locations,
)
from nnopt_cli.training.device import pin_threads

DATE_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")  # hydra.run.dir's ${now:%Y-%m-%d}

# what a fresh run would replace: a folder holding any of these holds a run
RUN_FILES = (layout.SUMMARY, layout.METRICS, layout.CHECKPOINT, layout.MODEL)


def run_files(folder: Path) -> list[str]:
    """The files of a run that `folder` already holds."""
    return [name for name in RUN_FILES if os.path.lexists(folder / name)]


# set by `run` when nnopt, not Hydra, writes .hydra/ (to this subfolder name): see write_hydra_files
HYDRA_SUBDIR_ENV = "NNOPT_HYDRA_SUBDIR"

def keep_recorded_threads(plain: dict, previous: dict) -> None:
    """A resumed run with threads=null keeps the thread count it ran with (a different count
    changes float sums, so the resumed run would not be bit-exact): summary.json records it."""
    recorded = previous.get("threads")
    if plain.get("threads") is None and isinstance(recorded, int) and not isinstance(recorded, bool):
        pin_threads(recorded)


class SetupSignals:
    """SIGTERM as KeyboardInterrupt outside the training loop (setup, test, post-training stages),
    so that the run is marked interrupted instead of dying with status running / post_training.
    The runner's own handler (interrupt.py) replaces this one during the epochs."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        raise KeyboardInterrupt

    def install(self) -> SetupSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous.clear()


def write_hydra_files(run_dir: Path, cfg: DictConfig, subdir: str) -> None:
    """What Hydra writes to <run>/.hydra/ (config, hydra, overrides), written by nnopt once the
    folder is locked and known to be this job's: Hydra would rewrite .hydra/ of a folder nnopt
    then refuses or skips. Atomic, so a full disk never leaves an empty config.yaml."""
    hydra_cfg = HydraConfig.instance().cfg
    # set while it is written out, as if Hydra had written it, then put back (no copy of the whole node)
    with read_write(hydra_cfg.hydra), open_dict(hydra_cfg.hydra):
        chosen = hydra_cfg.hydra.output_subdir
        hydra_cfg.hydra.output_subdir = subdir
        try:
            hydra_yaml = OmegaConf.to_yaml(hydra_cfg)
        finally:
            hydra_cfg.hydra.output_subdir = chosen
    out = run_dir / subdir
    out.mkdir(parents=True, exist_ok=True)
    # file names as in layout.py (under `subdir`, .hydra unless the user chose another)
    atomic_write_files(out, {Path(layout.CONFIG).name: OmegaConf.to_yaml(cfg).encode(),
                             Path(layout.HYDRA_CONFIG).name: hydra_yaml.encode(),
                             Path(layout.OVERRIDES).name: OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task).encode()})


def run_below(folder: Path, limit: int = 10_000) -> Path | None:
    """A run folder somewhere below `folder`, or None; looks at no more than `limit` folders (a
    hydra.run.dir of `.` in a home folder must not take minutes)."""
    for n, (root, dirs, files) in enumerate(os.walk(folder)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .hydra/, .locks/: never runs
        if n and any(name in files for name in RUN_FILES):
            return Path(root)
        if n >= limit:
            return None
    return None


def refuse_reuse(run_dir: Path, multirun: bool) -> None:
    """A fresh run never replaces another run's files (a fixed hydra.run.dir / hydra.sweep.dir reused),
    nor starts in a folder that holds runs below it (`nnopt compare` of it would mix them)."""
    held = run_files(run_dir)
    if held:
        status = (read_summary(run_dir) or {}).get("status", "unknown")
        how = ("rerun the sweep with skip_completed=true, or use a new hydra.sweep.dir" if multirun else
               f"continue it with resume={run_dir}, or choose another hydra.run.dir")
        raise RunDirError(f"{run_dir} already holds a run ({', '.join(held)}; status {status}); nothing in it "
                          f"was changed: {how}")
    below = None if multirun else run_below(run_dir)
    if below is not None:
        raise RunDirError(f"{run_dir} holds other runs ({below} is one); a run's folder holds one run: "
                          "choose another hydra.run.dir")


def refuse_reused_run_dir(args: list[str]) -> None:
    """`nnopt train hydra.run.dir=<folder>` (a single run): refuse_reuse before Hydra runs, because
    Hydra opens its log file in the folder first, and the app locks it: a refused folder that holds
    runs is then left exactly as it was. Skipped for sweeps, resume=, Hydra's info flags and
    torchrun's other ranks (rank 0 makes the folder they share)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if int(os.environ.get("RANK", "0")) != 0 or any(a in ("-m", "--multirun") for a in args) or any(
            a.split("=")[0] in INFO_FLAGS for a in args):
        return
    folder = None
    for a in args:
        key = a.split("=", 1)[0]
        if key.lstrip("+") == "resume" or key == "hydra.mode":
            return
        if key.lstrip("+") == "hydra.run.dir":
            folder = OverridesParser.create().parse_override(a).value()
    if isinstance(folder, str) and "${" not in folder and os.path.isdir(folder):
        refuse_reuse(Path(folder), multirun=False)


HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def discard_unused_folder(run_dir: Path, log_name: str, hydra_subdir: str | None) -> bool:
    """Remove the folder Hydra made for a run refused before it started, when it holds nothing but
    what this job put there (Hydra's log, the lock, .hydra/): `nnopt compare` would count a folder
    with .hydra/ as a run. A folder holding anything else is left as it is. True if removed."""
    ours = {log_name, LOCK_FILE} | ({hydra_subdir} if hydra_subdir else set())
    try:
        names = set(os.listdir(run_dir))
        if not names <= ours:
            return False
        sub = run_dir / hydra_subdir if hydra_subdir else None
        if sub is not None and sub.is_dir():
            if not set(os.listdir(sub)) <= set(HYDRA_FILES) or sub.is_symlink():
                return False
            for name in os.listdir(sub):
                os.unlink(sub / name)
            os.rmdir(sub)
        for name in names - ({hydra_subdir} if hydra_subdir else set()):
            os.unlink(run_dir / name)
        os.rmdir(run_dir)
    except OSError:  # another process wrote into it meanwhile, or it is not ours to remove
        return False
    _remove_empty_outputs_parents(run_dir)
    return True


def _remove_empty_outputs_parents(run_dir: Path) -> None:
    """The day folder (outputs/<date>/) Hydra made for the refused run, and outputs/ itself, when they
    are left empty: a refused config leaves no folder. Only folders within ./outputs are touched."""
    outputs = (Path.cwd() / "outputs").resolve()
    folder = run_dir.resolve().parent
    while folder == outputs or outputs in folder.parents:
        try:
            os.rmdir(folder)  # fails on a folder that holds anything (another run, latest)
        except OSError:
            return
        folder = folder.parent


# keys every run's config has had: a config without them was cut short (an empty file on a full disk)
RECORDED_KEYS = ("epochs", "seed", "dataset", "model", "optimizer")


def _lookup(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<missing>"
        node = node[part]
    return node


def _short(v) -> str:
    if isinstance(v, dict):
        v = v.get("name", v.get("_target_", v))
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


WEIGHTS_MAX_BYTES = 1 << 40  # model and checkpoint files: any size, but regular files inside the folder
CHECKSUM_MAX_BYTES = 4096
# the files a resumed run reads back or appends to, and the most bytes each may have
RESUMED_FILES = {
    layout.CONFIG: CONFIG_MAX_BYTES, layout.SUMMARY: SUMMARY_MAX_BYTES, layout.METRICS: METRICS_MAX_BYTES,
    layout.EVALS: SIDE_FILE_MAX_BYTES, layout.DIAGNOSTICS: SIDE_FILE_MAX_BYTES,
    **{name: WEIGHTS_MAX_BYTES for name in (layout.CHECKPOINT, layout.BEST_CHECKPOINT, layout.MODEL,
                                            layout.INIT_MODEL)},
    **{name + ".sha256": CHECKSUM_MAX_BYTES for name in (layout.CHECKPOINT, layout.BEST_CHECKPOINT, layout.MODEL,
                                                         layout.INIT_MODEL)},
}


def _data_locations_from(current: dict, saved: dict) -> None:
    """The dataset's root, source folder and download flag of this invocation, not of the folder:
    a resumed run reads and writes data caches where the user's own config or environment says."""
    mine, theirs = current.get("dataset"), saved.get("dataset")
    if not isinstance(theirs, dict):
        return
    for key in DATA_LOCATION_KEYS:
        theirs.pop(key, None)
        if isinstance(mine, dict) and key in mine:
            theirs[key] = mine[key]


def check_checkpoint(run_dir: Path, saved: dict) -> None:
    """The folder's checkpoint, if any, was written by the experiment its config describes: checked
    before the run builds anything from that config (restore checks it again with the run's own)."""
    path = run_dir / layout.CHECKPOINT
    if not path.exists():
        return
    ckpt = load_checkpoint(path)
    diff = config_diff(experiment_config(without_data_locations(ckpt["config"])),
                       experiment_config(without_data_locations(saved)))
    if diff:
        raise CheckpointError(f"{path} was written by a different experiment than {run_dir / layout.CONFIG} "
                              f"describes (they differ at {', '.join(diff[:5])}); refused to resume it")


def resume_config(run_dir: Path, current: dict, overrides: list[str]) -> dict:
    """The run's own config (<run>/.hydra/config.yaml), refusing overrides that would change it.

    `current` is what this invocation composed (defaults + `overrides`): an override is fine
    when it gives the value the run already has, or touches a key that does not change what
    the run computes (NON_EXPERIMENT_KEYS). Top-level keys added to nnopt since the run was
    made, and where the data lives (DATA_LOCATION_KEYS), come from `current`.
    """
    path = run_dir / layout.CONFIG
    if not run_dir.is_dir():
        raise ConfigError("resume", str(run_dir), "an existing run folder made by nnopt train")
    try:
        check_run_files(run_dir, RESUMED_FILES)
        saved = load_config(path)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: {run_dir} is not a run folder made by nnopt train") from None
    except UntrustedFileError as e:
        raise RunDirError(str(e)) from None
    except (ValueError, OSError) as e:
        raise RunDirError(f"{path} is corrupt ({str(e).removeprefix(str(path) + ': ')[:160]})") from None
    missing = [k for k in RECORDED_KEYS if k not in saved]
    if missing:  # e.g. a disk that filled while Hydra wrote it: never train the defaults instead
        raise RunDirError(f"{path} is corrupt (it lacks {', '.join(missing)}): the run's experiment is unknown")
    # the run folder may come from anywhere: build nothing it names that this command did not
    check_config_targets(saved, trusted_targets(current, overrides=overrides), f"{path}")
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("~+").split("@")[0].replace("/", ".")
        if key.split(".")[0] in NON_EXPERIMENT_KEYS:
            continue
        old, new = _lookup(saved, key), _lookup(current, key)
        if old != new:
            raise ConfigError("resume", str(run_dir), f"the override {o} would change the experiment (the run has "
                                                      f"{key}={_short(old)}); a resumed run keeps its own config: "
                                                      "drop the override, or start a new run")
    for k, v in current.items():
        if k not in saved or k in NON_EXPERIMENT_KEYS:
            saved[k] = v
    _data_locations_from(current, saved)
    try:
        check_checkpoint(run_dir, saved)
    except NnoptError as e:
        raise RunDirError(str(e)) from None
    return saved


def _point_latest(root: Path, target: str) -> None:
    """<root>/latest -> target, replaced atomically; quietly nothing where links cannot be made
    (some Windows setups, read-only folders)."""
    tmp = root / f".{layout.LATEST}.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        os.replace(tmp, root / layout.LATEST)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def link_latest(run_dir: Path) -> str | None:
    """Point <outputs>/latest at a single run's folder <outputs>/<date>/<time>-... Only for that
    layout (a run folder chosen by hydra.run.dir is left alone). Returns where it pointed before."""
    run_dir = Path(run_dir)
    if not DATE_FOLDER.fullmatch(run_dir.parent.name):
        return None
    root = run_dir.parent.parent
    try:
        previous = os.readlink(root / layout.LATEST)
    except OSError:
        previous = None
    _point_latest(root, os.path.join(run_dir.parent.name, run_dir.name))
    return previous


def unlink_latest(run_dir: Path, previous: str | None) -> None:
    """A refused run whose folder was discarded: <outputs>/latest points where it did before."""
    link = Path(run_dir).parent.parent / layout.LATEST
    try:
        if not (link.is_symlink() and os.path.realpath(link) == os.path.realpath(run_dir)):
            return
        if previous is None:
            link.unlink()
        else:
            _point_latest(link.parent, previous)
    except OSError:
        pass
