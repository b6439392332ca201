"""Your own data: `dataset=custom` (a function of yours), `dataset=npz` (arrays on disk) and
`dataset=image_folder` (torchvision's ImageFolder layout).

Each source yields four arrays, x_train, y_train, x_test, y_test; `checked` then holds them to the
contract every nnopt dataset meets (one line naming the array and what is wrong otherwise):

- x: a real-valued array of shape (N, *sample_shape), the same sample shape in train and test,
  every value finite (no NaN / inf); it becomes float32;
- y: integer class labels of shape (N,), N as in x, in [0, num_classes) where num_classes is the
  setting if given, else the largest label + 1.

The validation split, the normalization and everything after are load_dataset's, as for the
built-in datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nnopt_cli.config.build import bind, locate, settings
from nnopt_cli.config.datasets import OWN_DATASETS
from nnopt_cli.errors import ConfigError, DataError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# dataset.<key>s nnopt reads itself; every other key of dataset=custom goes to the function
RESERVED = ("name", "val_size", "split_seed", "normalize", "num_classes", "imbalance")


def check(node: dict) -> None:
    """What of an own-data node needs its function or files, before any folder or data: the function
    can be imported and takes the settings given; the file or folder exists. Its plain settings
    (normalize, num_classes, the image size and color) are config/datasets.py's."""
    name = node["name"]
    if name == "custom":
        fn = locate("dataset._target_", node.get("_target_"))
        if not callable(fn):
            raise ConfigError("dataset._target_", node["_target_"], "a function returning the train and test data")
        bind("dataset", fn, (), function_settings(node))
    elif name == "npz":
        path = _path(node)
        if not path.is_file():
            raise ConfigError("dataset.path", node.get("path"), "an existing .npz file holding " + ", ".join(ARRAYS))
    elif name == "image_folder":
        path = _path(node)
        for sub in (node.get("train_dir"), node.get("test_dir")):
            if not isinstance(sub, str) or not (path / sub).is_dir():
                raise ConfigError("dataset.path", node.get("path"),
                                  f"a folder holding {node.get('train_dir')}/<class>/<image> and "
                                  f"{node.get('test_dir')}/<class>/<image> ({path / str(sub)} not found)")


def function_settings(node: dict) -> dict[str, Any]:
    return {k: v for k, v in settings(node).items() if k not in RESERVED}


def _path(node: dict) -> Path:
    if not isinstance(node.get("path"), str) or not node["path"]:
        raise ConfigError("dataset.path", node.get("path"), "the path of your data (dataset.path=...)")
    return Path(node["path"]).expanduser()


def load(node: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """x_train, y_train, x_test, y_test (checked, x as float32, y as int64) and the number of classes."""
    name = node["name"]
    if name == "custom":
        fn = locate("dataset._target_", node.get("_target_"))
        arrays = from_result(fn(**function_settings(node)), node["_target_"])
    elif name == "npz":
        arrays = _npz(_path(node))
    elif name == "image_folder":
        arrays, classes = _image_folder(_path(node), node)
        return checked(arrays, classes, f"dataset={name}")
    else:
        raise ConfigError("dataset.name", name, "one of " + ", ".join(OWN_DATASETS))
    return checked(arrays, node.get("num_classes"), f"dataset={name}")


def from_result(result: Any, source: str) -> dict[str, Any]:
    """The four arrays from what a dataset function returned: a tuple (x_train, y_train, x_test,
    y_test), a dict with those keys, or a (train, test) pair of datasets yielding (x, y)."""
    if isinstance(result, dict):
        missing = [k for k in ARRAYS if k not in result]
        if missing:
            raise DataError(f"{source} returned a dict without {', '.join(missing)} (it needs {', '.join(ARRAYS)})")
        return {k: result[k] for k in ARRAYS}
    if isinstance(result, (tuple, list)) and len(result) == 4:
        return dict(zip(ARRAYS, result, strict=True))
    if isinstance(result, (tuple, list)) and len(result) == 2:
        (tx, ty), (sx, sy) = (_dataset_arrays(d, f"{source}'s {part} dataset") for d, part in
                              zip(result, ("train", "test"), strict=True))
        return {"x_train": tx, "y_train": ty, "x_test": sx, "y_test": sy}
    raise DataError(f"{source} returned {type(result).__name__}: it must return (x_train, y_train, x_test, y_test), "
                    f"a dict with those keys, or a (train, test) pair of datasets")


def _dataset_arrays(ds: Any, what: str) -> tuple[Any, Any]:
    """A map-style dataset (len + [i] -> (x, y)) as two stacked tensors; a TensorDataset directly."""
    tensors = getattr(ds, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) == 2:
        return tensors
    try:
        items = [ds[i] for i in range(len(ds))]
        xs = torch.stack([torch.as_tensor(x) for x, _ in items])
        ys = torch.as_tensor([int(y) for _, y in items])
    except Exception as e:  # PIL images without a ToTensor transform, items that are not (x, y) pairs...
        raise DataError(f"{what}: its items must be (tensor, int label) pairs of one shape "
                        f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})") from None
    return xs, ys


def _tensor(v: Any, key: str, source: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    try:
        return torch.as_tensor(v)
    except Exception as e:
        raise DataError(f"{source}: {key} is a {type(v).__name__}, not an array "
                        f"({(str(e).splitlines() or [''])[0][:100]})") from None


def checked(arrays: dict[str, Any], num_classes: int | None,
            source: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Hold the four arrays to the contract (module docstring); one DataError line if they miss it."""
    t = {k: _tensor(arrays[k], k, source) for k in ARRAYS}
    for split in ("train", "test"):
        x, y = t[f"x_{split}"], t[f"y_{split}"]
        if x.dim() < 2:
            raise DataError(f"{source}: x_{split} has shape {tuple(x.shape)}; it needs (samples, *sample_shape)")
        if y.dim() != 1:
            raise DataError(f"{source}: y_{split} has shape {tuple(y.shape)}; it needs (samples,), one label each")
        if len(x) != len(y):
            raise DataError(f"{source}: x_{split} has {len(x)} samples but y_{split} has {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{source}: x_{split} is empty")
        if x.dtype == torch.bool or x.is_complex() or not (x.is_floating_point() or _integer(x)):
            raise DataError(f"{source}: x_{split} has dtype {x.dtype}; it needs real numbers (float or integer)")
        if not _integer(y):
            raise DataError(f"{source}: y_{split} has dtype {y.dtype}; it needs integer class labels "
                            "(e.g. y.long())")
    if t["x_train"].shape[1:] != t["x_test"].shape[1:]:
        raise DataError(f"{source}: samples of x_train have shape {tuple(t['x_train'].shape[1:])} but those of "
                        f"x_test {tuple(t['x_test'].shape[1:])}")
    for split in ("train", "test"):
        y = t[f"y_{split}"]
        low, high = int(y.min()), int(y.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            allowed = f"[0, {num_classes - 1}] (dataset.num_classes={num_classes})" if num_classes else "0 or more"
            raise DataError(f"{source}: y_{split} holds labels from {low} to {high}; labels must be in {allowed}")
    for split in ("train", "test"):
        x = t[f"x_{split}"] = t[f"x_{split}"].float()
        bad = (~torch.isfinite(x)).sum().item()
        if bad:
            raise DataError(f"{source}: x_{split} holds {bad} NaN or infinite value(s); clean or impute them first")
    found = int(max(t["y_train"].max(), t["y_test"].max())) + 1
    return (t["x_train"], t["y_train"].long(), t["x_test"], t["y_test"].long(),
            num_classes if num_classes is not None else found)


def _integer(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _npz(path: Path) -> dict[str, Any]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:  # arrays only: never unpickles objects
            missing = [k for k in ARRAYS if k not in f.files]
            if missing:
                raise DataError(f"dataset=npz: {path} lacks {', '.join(missing)} (it holds {', '.join(f.files)}; "
                                f"nnopt reads {', '.join(ARRAYS)})")
            return {k: f[k] for k in ARRAYS}
    except DataError:
        raise
    except Exception as e:  # not a zip, object arrays (pickles), truncated...
        raise DataError(f"dataset=npz: {path} is not a readable .npz of plain arrays "
                        f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})") from None


def _image_folder(root: Path, node: dict) -> tuple[dict[str, Any], int]:
    """<root>/<train_dir>/<class>/<image> and the same under test_dir, resized to `size` and
    converted to `color`; the classes are the train folder's, in sorted order (ImageFolder's)."""
    from torchvision import datasets, transforms

    steps = [transforms.Resize(tuple(node["size"]))]
    if node["color"] == "grayscale":
        steps.append(transforms.Grayscale(num_output_channels=1))
    steps.append(transforms.PILToTensor())  # uint8, scaled to [0, 1] below
    transform = transforms.Compose(steps)
    out: dict[str, Any] = {}
    classes = None
    for split, sub in (("train", node["train_dir"]), ("test", node["test_dir"])):
        try:
            ds = datasets.ImageFolder(str(root / sub), transform=transform)
            x, y = _dataset_arrays(ds, f"dataset=image_folder: {root / sub}")
        except DataError:
            raise
        except Exception as e:  # no class folders, no images, an unreadable image
            raise DataError(f"dataset=image_folder: {root / sub} is not a folder of <class>/<image> files "
                            f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})") from None
        if classes is not None and ds.classes != classes:
            raise DataError(f"dataset=image_folder: {root / sub} has classes {ds.classes[:6]} but "
                            f"{root / node['train_dir']} has {classes[:6]}; both need the same class folders")
        classes = ds.classes
        out[f"x_{split}"], out[f"y_{split}"] = x.float().div_(255), y
    return out, len(classes or ())
