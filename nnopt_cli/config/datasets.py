"""What a `dataset` node says before anything is loaded: the dataset names, classification or
regression, the number of classes, the sample shape, and the ranges of its settings. Free of
torch, so `nnopt train` answers a bad dataset setting before importing it; data/ loads the data
and checks what needs files or your own function (data/own.py).
"""

from __future__ import annotations

from nnopt_cli.config.checks import need_bool, need_choice, need_int, need_int_list, need_num
from nnopt_cli.errors import ConfigError

OWN_DATASETS = ("custom", "npz", "image_folder")
DATASETS = ("mnist", "fashion_mnist", "kmnist", "mnist1d", "synthetic", "regression", *OWN_DATASETS)
CLASSIFICATION, REGRESSION = "classification", "regression"
COLORS = {"grayscale": 1, "rgb": 3}  # dataset=image_folder: dataset.color -> channels
MNIST1D_CLASSES = 10


def task(node: dict) -> str:
    """classification or regression, from the config alone."""
    return REGRESSION if node.get("name") == "regression" else CLASSIFICATION


def num_classes(node: dict) -> int:
    """The number of classes known from the config alone (10 where it is not: only model checks use
    it); 1 for regression: the model's one output."""
    if task(node) == REGRESSION:
        return 1
    return node["num_classes"] if node.get("num_classes") is not None else 10


def stated_num_classes(node: dict) -> int | None:
    """The number of classes when the config fixes it; None for your own data that leaves it to the labels."""
    if node.get("name") in OWN_DATASETS and node.get("num_classes") is None:
        return None
    return num_classes(node)


def input_shape(node: dict) -> tuple[int, ...] | None:
    """The shape of one sample, known from the config alone (models are checked with it before
    loading); None for your own data whose shape is known once loaded (custom, npz)."""
    if node.get("name") == "image_folder":
        return (COLORS.get(node.get("color"), 1), *node.get("size", (28, 28)))
    if node.get("name") in OWN_DATASETS:
        return None
    if node.get("name") == "mnist1d":
        return (1, node["final_seq_length"])
    if node.get("name") == "regression":
        return (node["n_features"],)
    return (1, 28, 28)


def mnist1d_split_sizes(num_samples: int, train_split: float) -> tuple[int, int]:
    """(train, test) sizes mnist1d's make_dataset produces: a whole number of samples per class, then split."""
    n = num_samples // MNIST1D_CLASSES * MNIST1D_CLASSES
    n_train = int(n * train_split)
    return n_train, n - n_train


def check_dataset_values(d: dict) -> None:
    """The `dataset` node's names and numbers (ConfigError on the first problem)."""
    need_choice("dataset.name", d.get("name"), DATASETS)
    need_int("dataset.val_size", d.get("val_size"), 1)
    if d.get("imbalance") is not None:
        need_num("dataset.imbalance", d["imbalance"], ge=1)
    if "split_seed" in d:
        need_int("dataset.split_seed", d["split_seed"], 0)
    if d["name"] == "synthetic":
        need_int("dataset.n_train", d.get("n_train"), 2)
        need_int("dataset.n_test", d.get("n_test"), 1)
        need_int("dataset.num_classes", d.get("num_classes"), 2)
        need_num("dataset.noise", d.get("noise"), ge=0)
    if d["name"] == "mnist1d":
        _check_mnist1d(d)
    if d["name"] == "regression":
        _check_regression(d)
    if d["name"] in OWN_DATASETS:
        _check_own(d)


def _check_mnist1d(node: dict) -> None:
    need_int("dataset.num_samples", node["num_samples"], 2 * MNIST1D_CLASSES)
    need_num("dataset.train_split", node["train_split"], gt=0, lt=1)
    need_int("dataset.final_seq_length", node["final_seq_length"], 4)
    if not isinstance(node["shuffle_seq"], bool):
        raise ConfigError("dataset.shuffle_seq", node["shuffle_seq"], "true or false")
    need_int("dataset.seed", node["seed"], 0)
    n_train, n_test = mnist1d_split_sizes(node["num_samples"], node["train_split"])
    if n_train < 2 or n_test < 1:
        raise ConfigError("dataset.train_split", node["train_split"],
                          f"leaves {n_train} training and {n_test} test samples of {node['num_samples']}; "
                          "both must be >= 1 (and training >= 2)")
    need_int("dataset.val_size", node["val_size"], 1, n_train - 1)


def _check_regression(d: dict) -> None:
    need_int("dataset.n_train", d.get("n_train"), 2)
    need_int("dataset.n_test", d.get("n_test"), 1)
    need_int("dataset.n_features", d.get("n_features"), 1)
    need_int("dataset.teacher_hidden", d.get("teacher_hidden"), 1)
    need_num("dataset.noise", d.get("noise"), ge=0)
    need_int("dataset.seed", d.get("seed"), 0)
    if d.get("imbalance") is not None:
        raise ConfigError("dataset.imbalance", d["imbalance"], "null for dataset=regression (it has no classes)")


def _check_own(node: dict) -> None:
    """Your own data's plain settings; its function, file or folder are checked by data/own.py."""
    need_bool("dataset.normalize", node.get("normalize"))
    if node.get("num_classes") is not None:
        need_int("dataset.num_classes", node["num_classes"], 2)
    if node["name"] == "image_folder":
        need_int_list("dataset.size", node.get("size"), allow_empty=False)
        if len(node["size"]) != 2:
            raise ConfigError("dataset.size", node["size"], "[height, width] in pixels")
        need_choice("dataset.color", node.get("color"), tuple(COLORS))
