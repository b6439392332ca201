"""Your own data: a function of yours (dataset=custom), arrays on disk (dataset=npz) and an image
folder (dataset=image_folder) become the same checked, split splits as the built-in datasets,
train, and are read by `nnopt compare`; bad data is one line before any training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nnopt_cli.data import check_dataset, load_splits
from nnopt_cli.errors import ConfigError, DataError
from nnopt_cli.store import layout
from nnopt_cli.store.targets import UntrustedTargetError, check_config_targets
from tests.conftest import compose_cfg

HERE = "tests.data.test_own_data"


def blobs(n_train: int = 240, n_test: int = 60, dim: int = 6, classes: int = 3, seed: int = 0):
    """A learnable problem: Gaussian blobs around one centre per class."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, dim, generator=g)
    y = torch.arange(n_train + n_test) % classes
    x = centres[y] + torch.randn(n_train + n_test, dim, generator=g)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def blobs_dict(**kw):
    return dict(zip(("x_train", "y_train", "x_test", "y_test"), blobs(**kw), strict=True))


def blobs_datasets(**kw):
    tx, ty, sx, sy = blobs(**kw)
    return torch.utils.data.TensorDataset(tx, ty), [(x, int(y)) for x, y in zip(sx, sy, strict=True)]


def bad(kind: str):
    """Data that breaks the contract in one way."""
    tx, ty, sx, sy = blobs()
    if kind == "shape":
        sx = sx[:, :4]
    elif kind == "label":
        ty = ty.clone()
        ty[7] = 9
    elif kind == "nans":
        tx = tx.clone()
        tx[3, 2] = float("nan")
    elif kind == "float_labels":
        ty = ty.float()
    elif kind == "count":
        ty = ty[:-1]
    return tx, ty, sx, sy


def node(target: str, **settings) -> dict:
    return {"name": "custom", "_target_": f"{HERE}.{target}", "val_size": 40, "split_seed": 0,
            "normalize": False, "num_classes": None, **settings}


@pytest.mark.parametrize("target", ["blobs", "blobs_dict", "blobs_datasets"])
def test_a_function_returning_tensors_a_dict_or_datasets_gives_the_same_splits(target):
    tx, ty, sx, sy = blobs()
    d = load_splits(node(target))
    assert d.name == "custom" and d.num_classes == 3 and d.input_shape == (6,)
    assert len(d.train_x) == 200 and len(d.val_x) == 40
    assert torch.equal(d.test_x, sx) and torch.equal(d.test_y, sy)  # normalize=false: the data as given
    # the split is a seeded permutation of the training set: nothing lost, nothing repeated
    both = torch.cat([d.train_x, d.val_x])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, tx.tolist()))
    assert d.train_y.dtype == torch.long and d.train_x.dtype == torch.float32


def test_settings_go_to_the_function_and_normalize_uses_the_training_split():
    d = load_splits(node("blobs", dim=4, classes=5, normalize=True))
    assert d.input_shape == (4,) and d.num_classes == 5
    assert abs(d.train_x.mean().item()) < 1e-5 and abs(d.train_x.std().item() - 1) < 1e-5
    assert abs(d.test_x.mean().item()) > 1e-4  # the test set is scaled with the training statistics, not its own


@pytest.mark.parametrize(("kind", "message"), [
    ("shape", "samples of x_train have shape (6,) but those of x_test (4,)"),
    ("label", "y_train holds labels from 0 to 9; labels must be in [0, 2] (dataset.num_classes=3)"),
    ("nans", "x_train holds 1 NaN or infinite value(s)"),
    ("float_labels", "y_train has dtype torch.float32; it needs integer class labels"),
    ("count", "x_train has 240 samples but y_train has 239 labels"),
])
def test_data_breaking_the_contract_is_one_line(kind, message):
    with pytest.raises(DataError) as e:
        load_splits(node("bad", kind=kind, num_classes=3))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_function_that_cannot_be_had_or_does_not_take_the_settings_is_refused_before_loading():
    with pytest.raises(ConfigError, match="dataset._target_.*an importable class"):
        check_dataset(node("nope"))
    with pytest.raises(ConfigError, match="depth"):
        check_dataset(node("blobs", depth=3))
    check_dataset(node("blobs", dim=4))


def test_npz_arrays_on_disk(tmp_path):
    tx, ty, sx, sy = blobs()
    np.savez(tmp_path / "d.npz", x_train=tx.numpy(), y_train=ty.numpy(), x_test=sx.numpy(), y_test=sy.numpy())
    d = load_splits({"name": "npz", "path": str(tmp_path / "d.npz"), "val_size": 40, "split_seed": 0,
                     "normalize": False, "num_classes": None})
    assert d.num_classes == 3 and torch.equal(d.test_x, sx) and len(d.train_x) == 200

    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=ty.numpy(),
             x_test=sx.numpy(), y_test=sy.numpy())
    with pytest.raises(DataError, match="not a readable .npz of plain arrays"):  # never unpickled
        load_splits({"name": "npz", "path": str(tmp_path / "obj.npz"), "val_size": 40, "normalize": False})
    np.savez(tmp_path / "few.npz", x_train=tx.numpy(), y_train=ty.numpy())
    with pytest.raises(DataError, match="lacks x_test, y_test"):
        load_splits({"name": "npz", "path": str(tmp_path / "few.npz"), "val_size": 40, "normalize": False})
    with pytest.raises(ConfigError, match="dataset.path"):
        check_dataset({"name": "npz", "path": str(tmp_path / "none.npz"), "val_size": 40, "normalize": False})


def image_tree(root, per_class: int = 12, size: int = 10) -> None:
    """<root>/{train,test}/{circle,square}/*.png: the class is visible in the pixels."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 3)):
        for label, cls in enumerate(("circle", "square")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                img[2:8, 2:8, label] = 255  # a red patch for circle, a green one for square
                Image.fromarray(img).save(folder / f"{i}.png")


@pytest.mark.parametrize(("color", "channels"), [("rgb", 3), ("grayscale", 1)])
def test_an_image_folder_is_resized_and_converted_as_stated(tmp_path, color, channels):
    image_tree(tmp_path)
    d = load_splits({"name": "image_folder", "path": str(tmp_path), "train_dir": "train", "test_dir": "test",
                     "size": [6, 5], "color": color, "val_size": 4, "split_seed": 0, "normalize": True})
    assert d.input_shape == (channels, 6, 5) and d.num_classes == 2
    assert len(d.train_x) + len(d.val_x) == 24 and len(d.test_x) == 8
    assert d.test_y.tolist() == [0] * 4 + [1] * 4  # ImageFolder's sorted class folders


def test_an_image_folder_whose_test_classes_differ_is_refused(tmp_path):
    image_tree(tmp_path)
    (tmp_path / "test" / "square").rename(tmp_path / "test" / "triangle")
    with pytest.raises(DataError, match="both need the same class folders"):
        load_splits({"name": "image_folder", "path": str(tmp_path), "train_dir": "train", "test_dir": "test",
                     "size": [6, 6], "color": "rgb", "val_size": 4, "normalize": True})


def test_a_run_folders_dataset_target_is_refused_unless_named_on_the_command_line():
    cfg = compose_cfg("dataset=custom", f"dataset._target_={HERE}.blobs", tiny=False)
    with pytest.raises(UntrustedTargetError, match="dataset._target_"):
        check_config_targets(cfg)
    check_config_targets(cfg, trusted={f"{HERE}.blobs"})


@pytest.mark.slow
def test_own_datasets_train_and_compare_reads_them(tmp_path, cli):
    tx, ty, sx, sy = blobs()
    np.savez(tmp_path / "d.npz", x_train=tx.numpy(), y_train=ty.numpy(), x_test=sx.numpy(), y_test=sy.numpy())
    image_tree(tmp_path / "images")
    common = ["epochs=1", "device=cpu", "threads=1", "batch_size.size=16", "model=mlp_small"]
    sources = {
        "custom": ["dataset=custom", f"dataset._target_={HERE}.blobs", "+dataset.dim=5", "dataset.val_size=40"],
        "npz": ["dataset=npz", f"dataset.path={tmp_path / 'd.npz'}", "dataset.val_size=40"],
        "image_folder": ["dataset=image_folder", f"dataset.path={tmp_path / 'images'}", "dataset.size=[8,8]",
                         "dataset.color=rgb", "dataset.val_size=4"],
    }
    for name, args in sources.items():
        out = cli("train", *args, *common, f"hydra.run.dir=runs/{name}")
        assert out.returncode == 0, out.stderr
        summary = json.loads((tmp_path / "runs" / name / layout.SUMMARY).read_text())
        assert summary["status"] == layout.Status.COMPLETED and 0 <= summary["test/acc"] <= 1
    shapes = {n: {k: v for k, v in json.loads((tmp_path / "runs" / n / layout.SUMMARY).read_text())["data"].items()
                  if k in ("input_shape", "num_classes")} for n in sources}
    assert shapes == {"custom": {"input_shape": [5], "num_classes": 3},
                      "npz": {"input_shape": [6], "num_classes": 3},
                      "image_folder": {"input_shape": [3, 8, 8], "num_classes": 2}}
    table = cli("compare", "runs", "--format", "json")
    assert table.returncode == 0, table.stderr
    rows = json.loads(table.stdout)
    rows = rows["runs"] if isinstance(rows, dict) else rows
    assert len(rows) == 3 and {str(r.get("dataset")) for r in rows} == set(sources)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "message"), [("shape", "x_test"), ("label", "labels must be in"),
                                               ("nans", "NaN")])
def test_bad_data_is_one_line_before_training(cli, tmp_path, kind, message):
    out = cli("train", "dataset=custom", f"dataset._target_={HERE}.bad", f"+dataset.kind={kind}",
              "dataset.num_classes=3", "dataset.val_size=40", "epochs=1", "device=cpu", "threads=1",
              "hydra.run.dir=run")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert not (tmp_path / "run" / layout.METRICS).exists() and not (tmp_path / "run" / layout.MODEL).exists()


@pytest.mark.slow
def test_a_function_that_cannot_be_imported_leaves_no_folder(cli, tmp_path):
    out = cli("train", "dataset=custom", f"dataset._target_={HERE}.nope", "hydra.run.dir=run")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "dataset._target_" in out.stderr
    assert not (tmp_path / "run").exists()


def test_post_training_stages_take_own_data_whose_shape_is_known_once_loaded(tmp_path):
    from nnopt_cli.run.recipe import RunContext, train
    from nnopt_cli.run.validate import validate

    own = ["dataset=custom", f"dataset._target_={HERE}.blobs", "dataset.val_size=40", "device=cpu", "threads=1", "epochs=1",
           "batch_size.size=32", "model.hidden=[16]"]
    teacher_cfg = compose_cfg(*own, tiny=False)
    teacher = train(teacher_cfg, RunContext(tmp_path / "teacher"))
    assert teacher["status"] == "completed"
    (tmp_path / "teacher" / ".hydra").mkdir()
    (tmp_path / "teacher" / layout.CONFIG).write_text(json.dumps(teacher_cfg))  # as nnopt train writes it
    for post in (["post=quantize"], ["post=distill", f"post.distill.teacher_run={tmp_path / 'teacher'}",
                                     "post.distill.epochs=1", "post.distill.student.hidden=[8]"]):
        cfg = compose_cfg(*own, *post, tiny=False)
        validate(cfg)  # the shape comes from the data (or the teacher run's summary), not the config
        summary = train(cfg, RunContext(tmp_path / post[0].split("=")[1]))
        assert summary["status"] == "completed" and summary["stages"][0]["status"] == "completed", summary
