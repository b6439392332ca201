"""MNIST-1D (Greydanus 2020, arXiv:2011.14439): 1-D signals of length 40, 10 classes, generated offline.

The `mnist1d` package builds the dataset from its ten templates with numpy/scipy (`make_dataset`);
its `get_dataset` would fetch a pickle from GitHub first, so nnopt never calls it: only
`make_dataset`, with the package's default settings (the published 4000 train / 1000 test split)
updated with the config's values and with no URL in them. Generation takes about a second, so the
arrays are cached as <data dir>/MNIST1D/mnist1d-<key>.npz, keyed by the generation settings and
the package version, written atomically and read with allow_pickle=False (never unpickled).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import stat
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from nnopt_cli.config.datasets import mnist1d_split_sizes
from nnopt_cli.errors import DataError

log = logging.getLogger("nnopt")

# dataset.<key> -> the mnist1d argument it sets; the package's defaults fill in the rest
GENERATION_KEYS = ("num_samples", "train_split", "final_seq_length", "shuffle_seq", "seed")
ARRAYS = ("x", "y", "x_test", "y_test")


def package_version() -> str:
    try:
        return version("mnist1d")
    except PackageNotFoundError:
        raise DataError("dataset=mnist1d needs the mnist1d package: pip install mnist1d") from None


def cache_path(root: Path, settings: dict) -> Path:
    """The cache file for these generation settings (and this mnist1d version)."""
    blob = json.dumps({**settings, "mnist1d": package_version()}, sort_keys=True)
    return root / "MNIST1D" / f"mnist1d-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npz"


def generate(settings: dict) -> dict[str, np.ndarray]:
    """Build the dataset with mnist1d.make_dataset; the global RNGs it reseeds are restored after."""
    package_version()
    from mnist1d.data import get_dataset_args, make_dataset
    from mnist1d.utils import ObjectView

    args = get_dataset_args(as_dict=True)
    del args["url"]  # make_dataset never reads it; without it nothing here could download
    args.update(settings)
    # make_dataset calls np.random.seed / random.seed: keep the run's own streams as they were
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(ObjectView(args))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64),
            "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int64)}


def cache_bytes(path: Path, cap: int) -> bytes:
    """The cache file's bytes, opened without blocking and read only if it is a regular file of at
    most `cap` bytes: a FIFO put in its place would hang `open`, a link to /dev/zero never end.
    ValueError for those, FileNotFoundError when it is missing."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > cap:
            raise ValueError(f"{st.st_size} bytes, more than these settings' arrays take")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            raise ValueError("larger than these settings' arrays take")
        return data
    finally:
        os.close(fd)


def read_cache(path: Path, settings: dict) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing or not what these settings make."""
    n_train, n_test = mnist1d_split_sizes(settings["num_samples"], settings["train_split"])
    # float32 samples and int64 labels, plus the zip's headers: anything much larger is not a cache
    cap = 2 * (n_train + n_test) * (4 * settings["final_seq_length"] + 8) + (1 << 20)
    try:
        with np.load(io.BytesIO(cache_bytes(path, cap)), allow_pickle=False) as f:
            arrays = {k: f[k] for k in ARRAYS}
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated zip, missing member, object arrays refused: regenerate
        log.warning("mnist1d cache %s is unreadable (%s: %s); regenerating it", path, type(e).__name__, e)
        return None
    length = settings["final_seq_length"]
    if (arrays["x"].shape != (n_train, length) or arrays["x_test"].shape != (n_test, length)
            or arrays["y"].shape != (n_train,) or arrays["y_test"].shape != (n_test,)):
        log.warning("mnist1d cache %s has unexpected shapes; regenerating it", path)
        return None
    return arrays


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)  # atomic: a concurrent reader sees no file or the whole file


def load(root: Path, settings: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, test_x, test_y) as tensors shaped (N, 1, length) and (N,)."""
    path = cache_path(root, settings)
    arrays = read_cache(path, settings)
    if arrays is None:
        arrays = generate(settings)
        try:
            write_cache(path, arrays)
        except OSError as e:  # a read-only cache dir costs a regeneration per run, nothing else
            log.warning("could not cache mnist1d in %s (%s)", path, e)
    return (torch.from_numpy(arrays["x"]).unsqueeze(1), torch.from_numpy(arrays["y"]),
            torch.from_numpy(arrays["x_test"]).unsqueeze(1), torch.from_numpy(arrays["y_test"]))
