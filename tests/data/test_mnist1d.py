"""dataset=mnist1d: generated offline from the mnist1d templates, cached safely; the 1-D CNN and logreg."""

from __future__ import annotations

import random
import socket
import urllib.request

import numpy as np
import pytest
import torch
from torch import nn

from nnopt_cli.data import load_dataset, mnist1d
from nnopt_cli.errors import ConfigError
from nnopt_cli.models.cnn1d import cnn1d
from nnopt_cli.run.validate import validate
from tests.conftest import compose_cfg

SMALL = {"num_samples": 300, "train_split": 0.8, "final_seq_length": 40, "shuffle_seq": False, "seed": 42}
MNIST1D = ["dataset=mnist1d", "device=cpu", "epochs=1", "threads=1"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network at all, and a fresh data cache: any download attempt fails the test."""
    import requests

    def refuse(*a, **k):
        raise AssertionError("mnist1d tried to use the network")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("NNOPT_DATA_DIR", str(tmp_path / "data"))


def test_generation_is_the_packages_make_dataset_with_its_published_defaults(tmp_path):
    from mnist1d.data import get_dataset_args, make_dataset

    tx, ty, sx, sy = mnist1d.load(tmp_path, {**SMALL, "num_samples": 5000})
    assert tx.shape == (4000, 1, 40) and sx.shape == (1000, 1, 40)  # the published split
    assert tx.dtype == torch.float32 and ty.dtype == torch.int64
    ref = make_dataset(get_dataset_args())  # the package's own path, defaults (seed 42)
    assert np.array_equal(tx.squeeze(1).numpy(), ref["x"].astype(np.float32))
    assert np.array_equal(sy.numpy(), ref["y_test"])
    assert set(ty.tolist()) == set(range(10))


def test_generation_leaves_the_global_rngs_as_they_were(tmp_path):
    np.random.seed(7)
    random.seed(7)
    expected = (np.random.rand(), random.random())
    np.random.seed(7)
    random.seed(7)
    mnist1d.generate(SMALL)
    assert (np.random.rand(), random.random()) == expected


def test_cache_is_keyed_by_the_settings_and_a_second_load_does_not_generate(tmp_path, monkeypatch):
    first = mnist1d.load(tmp_path, SMALL)
    files = list((tmp_path / "MNIST1D").glob("*.npz"))
    assert len(files) == 1 and not list((tmp_path / "MNIST1D").glob(".*tmp*"))  # written atomically
    with np.load(files[0], allow_pickle=False) as f:  # plain arrays, nothing to unpickle
        assert sorted(f.files) == sorted(mnist1d.ARRAYS)

    def no_generation(settings):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(mnist1d, "generate", no_generation)
    again = mnist1d.load(tmp_path, SMALL)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(AssertionError, match="regenerated"):  # other settings, other file
        mnist1d.load(tmp_path, {**SMALL, "seed": 1})


def test_a_corrupt_cache_file_is_regenerated(tmp_path):
    first = mnist1d.load(tmp_path, SMALL)
    path = mnist1d.cache_path(tmp_path, SMALL)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    again = mnist1d.load(tmp_path, SMALL)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert mnist1d.read_cache(path, SMALL) is not None  # rewritten whole


def test_splits_are_normalized_seeded_and_carved_from_train():
    kw = dict(val_size=30, split_seed=1, **SMALL)
    a, b = load_dataset("mnist1d", **kw), load_dataset("mnist1d", **kw)
    assert a.train_x.shape == (210, 1, 40) and a.val_x.shape == (30, 1, 40) and a.test_x.shape == (60, 1, 40)
    assert a.input_shape == (1, 40) and a.num_classes == 10
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert abs(a.train_x.mean().item()) < 1e-5 and abs(a.train_x.std().item() - 1) < 1e-5
    c = load_dataset("mnist1d", **{**kw, "split_seed": 2})
    assert not torch.equal(a.val_x, c.val_x)


BAD = [
    ("dataset.num_samples=5", "dataset.num_samples"),
    ("dataset.train_split=1.5", "dataset.train_split"),
    ("dataset.train_split=0.0001", "dataset.train_split"),  # no training signal left
    ("dataset.train_split=0.01", "dataset.val_size"),
    ("dataset.final_seq_length=2", "dataset.final_seq_length"),
    ("dataset.shuffle_seq=3", "dataset.shuffle_seq"),
    ("dataset.seed=-1", "dataset.seed"),
    ("dataset.val_size=4000", "dataset.val_size"),  # the training split has 4000: none left to train on
]


@pytest.mark.parametrize(("override", "key"), BAD)
def test_bad_settings_are_one_line_errors_naming_the_key(override, key):
    cfg = compose_cfg(*MNIST1D, override, tiny=False)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.key == key and "\n" not in str(e.value)


def test_train_runs_offline_on_mnist1d(tmp_path):
    from nnopt_cli.run.recipe import RunContext, train

    summary = train(compose_cfg(*MNIST1D, "model=logreg", tiny=False), RunContext(tmp_path / "run"))
    assert summary["status"] == "completed" and summary["params"] == 40 * 10 + 10  # the paper's LinearBase: 410
    assert 0.1 < summary["test/acc"] <= 1


def test_cnn1d_is_the_papers_cnn_and_trains():
    torch.manual_seed(0)
    model = cnn1d((1, 40), 10, nn.ReLU)
    convs = [m for m in model if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (25, 5, 2, 1), (25, 3, 2, 1), (25, 3, 2, 1)]
    # ConvBase: conv 1*25*5+25, 2 x (25*25*3+25), linear 25*5*10+10 (40 -> 19 -> 10 -> 5 positions)
    assert sum(p.numel() for p in model.parameters()) == 150 + 2 * 1900 + 1260
    x, y = torch.randn(64, 1, 40), torch.randint(0, 10, (64,))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"kernels": [5, 3]}, "2 entries for 3"),
    ({"channels": [25] * 6, "kernels": [5] * 6}, "too short"),
])
def test_cnn1d_refuses_settings_that_do_not_fit(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cnn1d((1, 40), 10, nn.ReLU, **kwargs)


def test_cnn1d_trains_through_the_runner(tmp_path):
    from nnopt_cli.run.recipe import RunContext, train

    cfg = compose_cfg(*MNIST1D, "model=cnn1d", "dataset.num_samples=600", "dataset.val_size=60", tiny=False)
    summary = train(cfg, RunContext(tmp_path / "run"))
    assert summary["status"] == "completed" and summary["params"] == 5210


@pytest.mark.parametrize(("overrides", "match"), [
    (["model=cnn1d", "dataset=synthetic"], "needs signals"),  # 28x28 images
    (["model=cnn1d", "dataset=mnist1d", "model.kernels=[5,3]"], "2 entries for 3"),
    (["model=cnn1d", "dataset=mnist1d", "model.channels=[9,9,9,9,9]", "model.kernels=[5,5,5,5,5]"], "too short"),
    (["model=cnn", "dataset=mnist1d"], "needs images"),
])
def test_models_that_do_not_fit_the_data_are_one_line_errors_before_loading(overrides, match, monkeypatch):
    monkeypatch.setattr(mnist1d, "load", lambda *a: pytest.fail("loaded data before checking the model"))
    with pytest.raises(ConfigError, match=match) as e:
        validate(compose_cfg(*overrides, "device=cpu", tiny=False))
    assert "\n" not in str(e.value)
