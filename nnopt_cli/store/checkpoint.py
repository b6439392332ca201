"""Checkpoints: all a run needs to continue exactly where it stopped, as plain tensors and containers.

checkpoint.pt holds the model, the trainer's state (optimizer, scheduler, GradScaler, the
permutation Generator and, after an interrupt, the half-done epoch), the batch-size policy,
early stopping, every RNG (torch, CUDA, numpy, python), the epoch, best-val tracking, the
metrics rows so far (one JSON text, see RowsText) and the resolved config. Nothing in it is a
pickled Python object, so it loads with `torch.load(weights_only=True)`: a file crafted to run
code when unpickled is refused. RunDir.save_checkpoint replaces it atomically (temporary file in
the same folder, fsync, rename).

Every checkpoint records its `format` (summary.json too); `upgrade` brings an older one to
FORMAT, one documented step per format, so the code that restores a run reads one shape only.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nnopt_cli
from nnopt_cli.errors import NnoptError
from nnopt_cli.store.folder import checksum_path, file_sha256
from nnopt_cli.store.layout import experiment_config
from nnopt_cli.store.untrusted import (
    UntrustedFileError,
    former_targets,
    read_text,
    rename_targets,
    without_data_locations,
)

if TYPE_CHECKING:
    import torch

# torch and numpy are imported by the functions that load or build checkpoints: comparing configs
# (a sweep's skip_completed, resume=) and refusing a bad config need neither

FORMAT = 3
REQUIRED_KEYS = ("format", "config", "epoch", "model", "trainer", "rng", "progress", "metrics")


class CheckpointError(NnoptError):
    """A checkpoint or model file is missing, corrupt, unsafe or from another experiment."""


# ---------------------------------------------------------------------------- safe loading


def verify_checksum(path: Path, what: str = "file") -> None:
    """Compare `path` with the sha256 nnopt wrote beside it (`<file>.sha256`, run_dir.save_state_dict):
    flipped bytes anywhere, tensor data included, are a one-line CheckpointError. A file written
    before nnopt wrote checksums has none and is not checked."""
    sidecar = checksum_path(Path(path))
    try:
        listed = read_text(sidecar, 4096).split()
    except FileNotFoundError:
        return
    except (OSError, UntrustedFileError) as e:
        raise CheckpointError(f"cannot read the checksum of {what} {path} ({e})") from None
    try:
        actual = file_sha256(path)
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path} ({e.strerror})") from None
    if actual not in listed:
        raise CheckpointError(f"{what} {path} is corrupt: its sha256 differs from the one written with it "
                              f"({sidecar.name}); its bytes changed on disk")


def safe_load(path: Path, what: str = "checkpoint") -> Any:
    """torch.load(weights_only=True), after the checksum check, with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    verify_checksum(path, what)
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines() or [""]
        unsafe = next((ln.strip() for ln in lines if "Unsupported global" in ln or "GLOBAL " in ln), None)
        if unsafe is not None:  # the file names a Python callable: what a code-running payload needs
            raise CheckpointError(
                f"refused to load {what} {path}: it holds pickled Python objects that could run code "
                f"({unsafe[:120]}); nnopt files hold tensors and plain containers only") from None
        detail = next((ln.strip() for ln in lines if "Unsupported" in ln), lines[0])
        raise CheckpointError(f"{what} {path} is corrupt ({detail[:120]})") from None
    except Exception as e:  # zip/stream errors: RuntimeError, EOFError, ValueError, OSError
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({type(e).__name__}: {first[:120]})") from None


def load_checkpoint(path: Path, train_samples: int | None = None) -> dict:
    """Load and check a checkpoint written by `make_checkpoint`, upgraded to FORMAT, with its
    `metrics` decoded from JSON text into the list of rows. `train_samples` (the run's
    training-set size) lets `upgrade` rebuild what format 1 lacked."""
    ckpt = safe_load(path)
    found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
    known = found == FORMAT or (type(found) is int and found in UPGRADES)
    if not isinstance(ckpt, dict) or not known:
        raise CheckpointError(f"{path} is not an nnopt checkpoint of a format this nnopt reads "
                              f"(1 to {FORMAT}; found {found!r})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)}")
    try:
        ckpt = upgrade(ckpt, train_samples)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} is corrupt: format {found} could not be upgraded "
                              f"({type(e).__name__}: {str(e)[:120]})") from None
    try:
        return {**ckpt, "metrics": decode_rows(ckpt["metrics"])}
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is corrupt: its metrics rows are not a JSON list of objects "
                              f"({type(e).__name__}: {str(e)[:120]})") from None


# ---------------------------------------------------------------------------- formats


def _format_1_to_2(ckpt: dict, train_samples: int | None) -> dict:
    """format 1 -> 2: format 1 grew without a new number, so a format-1 file may lack the trainer's
    `counters` (steps, samples, passes, training seconds), `observers`, `averaging`,
    `swa_scheduler` and `raw_weights`, and names `_target_`s by module paths nnopt has since
    moved. Format 2 always has them all, under current names. Counters are rebuilt from the
    metrics: one forward and one backward pass per step, every epoch seeing the training set."""
    trainer = dict(ckpt["trainer"])
    if trainer.get("counters") is None:
        progress, rows = ckpt["progress"], ckpt["metrics"]
        steps = sum(int(r["steps"]) for r in rows)
        trainer["counters"] = {
            "total_steps": steps,
            # None only where nothing is restored from it (a sweep reading the checkpoint's config)
            "samples_seen": train_samples * progress["epoch"] if train_samples is not None else None,
            "forward_passes": steps, "backward_passes": steps, "train_s": float(progress["train_time_s"]),
        }
    trainer.setdefault("observers", {})
    for key in ("averaging", "swa_scheduler", "raw_weights"):
        trainer.setdefault(key, None)
    return {**ckpt, "trainer": trainer, "config": rename_targets(ckpt["config"])}


def _format_2_to_3(ckpt: dict, train_samples: int | None) -> dict:
    """format 2 -> 3: format 2 pickled the metrics rows as a list of dicts, which made every
    checkpoint cost more than the one before; format 3 holds them as one JSON text (RowsText)."""
    return {**ckpt, "metrics": RowsText().text(ckpt["metrics"])}


# format k -> the step from k to k + 1; add one per format change and raise FORMAT
UPGRADES = {1: _format_1_to_2, 2: _format_2_to_3}


def upgrade(checkpoint: dict, train_samples: int | None = None) -> dict:
    """A checkpoint of any format nnopt wrote, brought to FORMAT one step at a time (a new dict:
    the caller's is left as it was)."""
    ckpt = dict(checkpoint)
    while ckpt.get("format") != FORMAT:
        step = UPGRADES[ckpt.get("format")]
        ckpt = {**step(ckpt, train_samples), "format": ckpt["format"] + 1}
    return ckpt


# ---------------------------------------------------------------------------- metrics rows


class RowsText:
    """The metrics rows so far as the one JSON text a checkpoint holds, each row encoded once.

    Pickled as a list of dicts, the rows made every checkpoint slower than the one before (torch's
    pickler makes a Python call per key and number: at epoch 150 an MNIST-1D MLP's checkpoint took
    1.4 times what it took at epoch 1). json.dumps is no faster per row, but a run's rows only grow:
    each is encoded when first checkpointed and the text of the earlier ones is reused, so a
    checkpoint costs about the same at epoch 150 as at epoch 1 (benchmarks/checkpoint_cost.py). The
    text is plain data (a str), exact for everything a row holds, NaN and infinities included."""

    def __init__(self) -> None:
        self._encoded: list[str] = []

    def text(self, rows: list[dict]) -> str:
        if len(rows) < len(self._encoded):  # not the rows this text was built from
            self._encoded = []
        self._encoded += [json.dumps(row, separators=(",", ":")) for row in rows[len(self._encoded):]]
        return "[" + ",".join(self._encoded) + "]"


def decode_rows(text: str) -> list[dict]:
    """The rows of a checkpoint's `metrics` text (RowsText); TypeError/ValueError if it is not one."""
    if not isinstance(text, str):
        raise TypeError(f"expected JSON text, found {type(text).__name__}")
    rows = json.loads(text)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("not a list of JSON objects")
    return rows


# ---------------------------------------------------------------------------- config identity


def config_fingerprint(cfg: dict) -> str:
    blob = json.dumps(experiment_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_fingerprints(cfg: dict) -> set[str]:
    """The fingerprints a run folder of this experiment may record as its config_sha: today's, and
    the one of a folder written when its `_target_`s had their former names (untrusted.py)."""
    return {config_fingerprint(cfg), config_fingerprint(former_targets(cfg))}


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two plain configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += config_diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "<root>"]


# ---------------------------------------------------------------------------- RNG states


def rng_state(device: torch.device) -> dict:
    """Every RNG a run draws from, as tensors and plain numbers."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "cuda": None,
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- whole checkpoint


def make_checkpoint(cfg: dict, model: torch.nn.Module, trainer, stopper, device: torch.device,
                    progress: dict, metrics: list[dict], rows_text: RowsText | None = None) -> dict:
    """The checkpoint of a run at this instant. `progress` holds the loop's own counters
    (epoch, best val, train time, stop reason); `trainer` and `stopper` have state_dict().
    `rows_text`, kept for the whole run, encodes each metrics row once (without it: all of them)."""
    return {
        "format": FORMAT,
        "nnopt_version": nnopt_cli.__version__,
        "config": cfg,
        "epoch": progress["epoch"],
        "model": {k: v.detach() for k, v in model.state_dict().items()},
        "trainer": trainer.state_dict(),
        "early_stopping": stopper.state_dict() if stopper is not None else None,
        "rng": rng_state(device),
        "progress": progress,
        "metrics": (rows_text or RowsText()).text(metrics),
    }


def restore_checkpoint(ckpt: dict, cfg: dict, model: torch.nn.Module, trainer, stopper, path: Path) -> dict:
    """Load a checkpoint into freshly built objects; RNGs last, so building them drew nothing
    that matters. Returns the loop's counters (see make_checkpoint)."""
    diff = config_diff(experiment_config(without_data_locations(ckpt["config"])),
                       experiment_config(without_data_locations(cfg)))
    if diff:
        raise CheckpointError(f"{path} was written by a different experiment (config differs at "
                              f"{', '.join(diff[:5])}); start a new run instead of resuming")
    try:
        model.load_state_dict(ckpt["model"])
        trainer.load_state_dict(ckpt["trainer"])
        if stopper is not None and ckpt.get("early_stopping") is not None:
            stopper.load_state_dict(ckpt["early_stopping"])
        set_rng_state(ckpt["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} does not fit this run ({type(e).__name__}: {first[:150]})") from None
    return dict(ckpt["progress"])
