"""Datasets as in-memory tensors: the training loop batches by index, no DataLoader on the hot path.

`load_dataset` returns normalized float tensors of shape (N, C, H, W) plus integer labels, with a
seeded validation split carved from the training set. The test set is only for final evaluation.
Your own data (`dataset=custom|npz|image_folder`) comes through own.py, checked against the same
contract, and is split and (if `normalize`) normalized here like the built-in datasets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

# what the config says about the dataset, torch-free (config/datasets.py); importable from here too
from nnopt_cli.config.datasets import CLASSIFICATION as CLASSIFICATION
from nnopt_cli.config.datasets import DATASETS, MNIST1D_CLASSES, OWN_DATASETS, check_dataset_values
from nnopt_cli.config.datasets import REGRESSION as REGRESSION
from nnopt_cli.config.datasets import input_shape as input_shape
from nnopt_cli.config.datasets import num_classes as num_classes
from nnopt_cli.config.datasets import stated_num_classes as stated_num_classes
from nnopt_cli.config.datasets import task as task
from nnopt_cli.data import imbalance as long_tail
from nnopt_cli.data import mnist1d, own, regression
from nnopt_cli.errors import ConfigError, DataError

PACKAGED_MNIST = Path(__file__).parent / "mnist"

# md5 of the decompressed canonical IDX files (the official MNIST md5s)
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


@dataclass
class Splits:
    """Train/val/test tensors of one dataset, already normalized. Classification: integer labels and
    num_classes outputs; regression: float targets of shape (N,) and one output (num_classes=1)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device) -> Splits:
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return Splits(name=self.name, num_classes=self.num_classes, **moved)

    def clone(self) -> Splits:
        copies = {k: getattr(self, k).clone() for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return Splits(name=self.name, num_classes=self.num_classes, **copies)

    @property
    def task(self) -> str:
        return REGRESSION if self.train_y.is_floating_point() else CLASSIFICATION

    def class_counts(self) -> torch.Tensor | None:
        """Training samples per class, on the labels' device; None for regression."""
        if self.task == REGRESSION:
            return None
        return torch.bincount(self.train_y, minlength=self.num_classes)


def default_root() -> Path:
    """Where decompressed dataset files live (torchvision's <root>/<Name>/raw layout)."""
    return Path(os.environ.get("NNOPT_DATA_DIR", Path.home() / ".cache" / "nnopt" / "datasets"))


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_mnist_raw(root: Path, source_dir: Path = PACKAGED_MNIST) -> Path:
    """Make <root>/MNIST/raw hold the four verified IDX files; return that folder.

    A cached file with the right md5 is used as it is; anything else is (re)extracted from the
    .gz in `source_dir` and checked against the canonical md5 before it is used. A file once
    verified is not hashed again while its size and modification time stay those recorded in
    VERIFIED_FILE (hashing 55 MB is ~0.1 s of every run); any write to it changes them.
    """
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    verified = _read_verified(raw)
    changed = False
    for name, md5 in MNIST_MD5.items():
        target = raw / name
        stamp = _stamp(target, md5) if target.exists() else None
        if stamp is not None and (verified.get(name) == stamp or _md5(target) == md5):
            if verified.get(name) != stamp:
                verified[name], changed = stamp, True
            continue
        archive = source_dir / f"{name}.gz"
        if not archive.exists():
            raise DataError(f"MNIST file missing: {archive}")
        try:
            with gzip.open(archive, "rb") as f:
                data = f.read()
        except (OSError, EOFError) as e:
            raise DataError(f"MNIST file is corrupt or truncated: {archive} ({e})") from None
        if hashlib.md5(data).hexdigest() != md5:
            raise DataError(f"MNIST file does not match the canonical md5 {md5}: {archive}")
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # atomic: a concurrent reader sees the old or the new file, never half
        verified[name], changed = _stamp(target, md5), True
    if changed:
        tmp = raw / f"{VERIFIED_FILE}.tmp{os.getpid()}"
        with contextlib.suppress(OSError):  # a read-only cache is still usable: it is hashed every time
            tmp.write_text(json.dumps(verified))
            os.replace(tmp, raw / VERIFIED_FILE)
    return raw


VERIFIED_FILE = ".verified.json"


def _stamp(path: Path, md5: str) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, md5]


def _read_verified(raw: Path) -> dict:
    try:
        got = json.loads((raw / VERIFIED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format: magic 0x0000 08 <ndim>, big-endian int32 dims, data)."""
    with open(path, "rb") as f:  # read once into a writable buffer the tensor then shares (no copies)
        blob = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(blob)
    if len(blob) < 4 or blob[:3] != b"\x00\x00\x08":
        raise DataError(f"not an IDX file of unsigned bytes: {path}")
    ndim = blob[3]
    dims = [int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    if len(blob) - start != math.prod(dims):
        raise DataError(f"IDX file is truncated: {path} ({max(len(blob) - start, 0)} bytes for shape {dims})")
    return torch.frombuffer(blob, dtype=torch.uint8, offset=start, count=math.prod(dims)).reshape(dims)


def _torchvision_split(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "kmnist": tvd.KMNIST}[name]
    try:
        ds = cls(root=str(root), train=train, download=download)
    except Exception as e:  # torchvision raises RuntimeError / URLError / OSError depending on the failure
        where = root / cls.__name__ / "raw"
        raise DataError(
            f"dataset={name}: could not load or download it ({type(e).__name__}); offline, put its four "
            f"IDX files (train/t10k images/labels, .gz or not) in {where}"
        ) from None
    return ds.data, ds.targets


def _synthetic(n_train: int, n_test: int, num_classes: int, noise: float, seed: int):
    """Learnable 28x28 images: a random prototype per class plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, 1, 28, 28, generator=g)
    n = n_train + n_test
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = protos[y] + noise * torch.randn(n, 1, 28, 28, generator=g)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# While `keep_loaded()` is active: what load_dataset prepared, by its arguments, with the version
# counters its tensors had then (see there)
_KEPT: dict[str, tuple[Splits, tuple[int, ...]]] | None = None
_SHARED = False  # hand out the kept tensors themselves (shared_between_runs, share_loaded_for_this_process)


@contextlib.contextmanager
def keep_loaded() -> Iterator[None]:
    """Within this block load_dataset prepares each dataset once and hands every caller its own copy.

    For many short runs in one process (nnopt tune-lr): a copy of MNIST-1D costs microseconds where
    loading it costs milliseconds (MNIST: ~0.1 s against ~0.7 s), and a run that changes its tensors
    in place changes only its copy, never what the next run gets.
    """
    global _KEPT
    outer, _KEPT = _KEPT, ({} if _KEPT is None else _KEPT)
    try:
        yield
    finally:
        _KEPT = outer


def share_loaded_for_this_process() -> None:
    """Until the process ends, load_dataset prepares each dataset once and hands every caller the
    very same tensors: for a sweep's jobs in one process (Hydra's basic launcher, a joblib or
    forked worker), which run one after the other. A copy of MNIST would cost each job ~0.07 s.

    Safe because a run changes no data tensor in place, and checked: a tensor changed in place by
    any torch operation (on it, a view or a detached alias) has a new version counter, and then the
    next caller gets the dataset prepared again, never the changed tensors (load_dataset). Writes
    torch does not count (through `.data`, or a numpy array of the tensor) are not seen.
    """
    global _KEPT, _SHARED
    if _KEPT is None:
        _KEPT = {}
    _SHARED = True


@contextlib.contextmanager
def shared_between_runs() -> Iterator[None]:
    """Within this block every run gets the very same tensors of a dataset, no copy: for the runs of a
    vectorized group (training/lockstep.py), which train on one stacked batch and change no tensor
    in place; 64 copies of MNIST would take 12 GB."""
    global _SHARED
    outer, _SHARED = _SHARED, True
    try:
        with keep_loaded():
            yield
    finally:
        _SHARED = outer


def _versions(splits: Splits) -> tuple[int, ...]:
    """The tensors' version counters: torch increments one at every in-place change of it or its views."""
    return tuple(getattr(splits, k)._version for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"))


def load_dataset(name: str, **kwargs) -> Splits:
    """Load `name` into memory, normalize with training-set statistics, carve the validation split.

    Inside keep_loaded() a dataset is prepared once per arguments (name, every setting, the data
    root); what was kept is prepared again if a caller changed one of its tensors in place."""
    if _KEPT is None:
        return _load(name, **kwargs)
    key = json.dumps([name, kwargs, str(default_root())], sort_keys=True, default=str)
    kept = _KEPT.get(key)
    if kept is None or _versions(kept[0]) != kept[1]:
        splits = _load(name, **kwargs)
        kept = _KEPT[key] = (splits, _versions(splits))
    # a Splits of its own: a caller that rebinds a field (splits.train_x = ...) rebinds only its own
    return dataclasses.replace(kept[0]) if _SHARED else kept[0].clone()


def _load(name: str, **kwargs) -> Splits:
    if name in OWN_DATASETS:
        tx, ty, sx, sy, classes = own.load({"name": name, **kwargs})
        return _split(name, tx, ty, sx, sy, classes, kwargs["val_size"], kwargs.get("split_seed", 0),
                      normalize=kwargs.get("normalize", False), imbalance=kwargs.get("imbalance"))
    return _load_builtin(name, **kwargs)


def _load_builtin(
    name: str,
    *,
    val_size: int,
    split_seed: int = 0,
    root: str | Path | None = None,
    download: bool = False,
    source_dir: str | Path | None = None,
    n_train: int = 1024,
    n_test: int = 256,
    num_classes: int = 10,
    noise: float = 0.5,
    num_samples: int = 5000,
    train_split: float = 0.8,
    final_seq_length: int = 40,
    shuffle_seq: bool = False,
    seed: int = 42,
    imbalance: float | None = None,
    n_features: int = 10,
    teacher_hidden: int = 10,
) -> Splits:
    root = Path(root).expanduser() if root else default_root()
    if name == "mnist":  # the shipped, md5-verified IDX files, read directly (importing torchvision costs ~1 s)
        raw = prepare_mnist_raw(root, Path(source_dir).expanduser() if source_dir else PACKAGED_MNIST)
        tx, ty = read_idx(raw / "train-images-idx3-ubyte"), read_idx(raw / "train-labels-idx1-ubyte")
        sx, sy = read_idx(raw / "t10k-images-idx3-ubyte"), read_idx(raw / "t10k-labels-idx1-ubyte")
    elif name in ("fashion_mnist", "kmnist"):
        tx, ty = _torchvision_split(name, root, True, download)
        sx, sy = _torchvision_split(name, root, False, download)
    images = name in ("mnist", "fashion_mnist", "kmnist")
    if images:
        num_classes = 10
    elif name == "mnist1d":
        tx, ty, sx, sy = mnist1d.load(root, {"num_samples": num_samples, "train_split": train_split,
                                             "final_seq_length": final_seq_length, "shuffle_seq": shuffle_seq,
                                             "seed": seed})
        num_classes = MNIST1D_CLASSES
    elif name == "synthetic":
        tx, ty, sx, sy = _synthetic(n_train, n_test, num_classes, noise, split_seed)
    elif name == "regression":
        tx, ty, sx, sy = regression.load(n_train, n_test, n_features, teacher_hidden, noise, seed)
        return _split(name, tx, ty, sx, sy, 1, val_size, split_seed, normalize=False)
    else:
        raise ConfigError("dataset.name", name, f"one of {', '.join(DATASETS)}")
    if images:
        tx, sx = tx.unsqueeze(1), sx.unsqueeze(1)  # views; scaled to [0, 1] after the split (4x less to move)
    return _split(name, tx, ty, sx, sy, num_classes, val_size, split_seed, normalize=True, images=images,
                  imbalance=imbalance)


def _split(name: str, tx: torch.Tensor, ty: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, num_classes: int,
           val_size: int, split_seed: int, *, normalize: bool, images: bool = False,
           imbalance: float | None = None) -> Splits:
    """Carve the seeded validation split from the training set, make the rest long-tailed if
    `imbalance` is set (imbalance.py: the training split only), then normalize with the training
    split's mean and std (images: bytes scaled to [0, 1] first)."""
    if not 1 <= val_size < len(tx):
        raise ConfigError("dataset.val_size", val_size, f"an integer in [1, {len(tx) - 1}] for dataset={name}")
    perm = torch.randperm(len(tx), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if imbalance is not None:
        train_idx = train_idx[long_tail.subsample(ty[train_idx], num_classes, imbalance, split_seed, name)]
    # split first (on bytes for images: 4x less to move), then scale: the same values as scaling first
    train_x, val_x = tx[train_idx], tx[val_idx]
    if images:
        train_x, val_x, sx = (t.float().div_(255) for t in (train_x, val_x, sx))
    else:
        sx = sx.clone()  # the loader's tensor may be kept by it: normalized in place below
    if normalize:
        mean, std = train_x.mean(), train_x.std()
        if not std > 0:
            raise DataError(f"dataset={name}: every training input has the same value {mean.item():.4g}; "
                            "there is nothing to learn (or set dataset.normalize=false)")
        for t in (train_x, val_x, sx):  # in place, on tensors made here: the same values as (t - mean) / std
            t.sub_(mean).div_(std)
    target = (lambda t: t.float()) if ty.is_floating_point() else (lambda t: t.long())  # regression: floats
    return Splits(
        name=name,
        train_x=train_x.contiguous(),
        train_y=target(ty[train_idx]),
        val_x=val_x.contiguous(),
        val_y=target(ty[val_idx]),
        test_x=sx.contiguous(),
        test_y=target(sy),
        num_classes=num_classes,
    )


def load_splits(node: dict) -> Splits:
    """The `dataset` config node -> its splits (on the CPU)."""
    return load_dataset(node["name"], **{k: v for k, v in node.items() if k != "name"})


def check_dataset(d: dict) -> None:
    """The dataset's settings (config/datasets.py), then your own data's function, file or folder."""
    check_dataset_values(d)
    check_sources(d)


def check_sources(d: dict) -> None:
    """Your own data: the function can be imported and takes its settings, the file or folder exists."""
    if d["name"] in OWN_DATASETS:
        own.check(d)
