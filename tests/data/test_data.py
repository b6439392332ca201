"""The shipped MNIST is verified byte-exact; broken files fail loudly; splits are seeded."""

from __future__ import annotations

import gzip
import os
import shutil

import pytest
import torch

from nnopt_cli.data import MNIST_MD5, PACKAGED_MNIST, load_dataset, prepare_mnist_raw
from nnopt_cli.errors import ConfigError, DataError


def test_packaged_mnist_has_the_canonical_files():
    assert {p.name for p in PACKAGED_MNIST.glob("*.gz")} == {f"{n}.gz" for n in MNIST_MD5}


def test_mnist_loads_with_the_canonical_sizes(tmp_path):
    d = load_dataset("mnist", val_size=5000, root=tmp_path)
    assert d.train_x.shape == (55000, 1, 28, 28) and d.val_x.shape == (5000, 1, 28, 28)
    assert d.test_x.shape == (10000, 1, 28, 28) and d.num_classes == 10
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.long
    # normalized with training statistics
    assert abs(d.train_x.mean().item()) < 1e-3 and abs(d.train_x.std().item() - 1) < 1e-3
    assert torch.bincount(d.test_y).tolist()[:2] == [980, 1135]  # the official test-set class counts
    # torchvision's layout: decompressed IDX files under <root>/MNIST/raw
    assert {p.name for p in (tmp_path / "MNIST" / "raw").iterdir()} == {*MNIST_MD5, ".verified.json"}


def test_validation_split_is_seeded_and_disjoint():
    a = load_dataset("synthetic", val_size=100, split_seed=3, n_train=500, n_test=50)
    b = load_dataset("synthetic", val_size=100, split_seed=3, n_train=500, n_test=50)
    assert torch.equal(a.val_x, b.val_x) and len(a.train_x) == 400
    rows = {tuple(r.flatten()[:8].tolist()) for r in a.train_x}
    assert not any(tuple(r.flatten()[:8].tolist()) in rows for r in a.val_x)


def corrupt_copy(tmp_path, name: str, how: str):
    src = tmp_path / "src"
    src.mkdir()
    for p in PACKAGED_MNIST.glob("*.gz"):
        shutil.copy(p, src / p.name)
    target = src / f"{name}.gz"
    data = target.read_bytes()
    if how == "truncate":
        target.write_bytes(data[: len(data) // 2])
    else:  # same length, valid gzip, wrong content
        raw = bytearray(gzip.decompress(data))
        raw[5000] ^= 0xFF
        target.write_bytes(gzip.compress(bytes(raw)))
    return src


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_archive_is_an_error_naming_the_file(tmp_path, how):
    src = corrupt_copy(tmp_path, "t10k-labels-idx1-ubyte", how)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        prepare_mnist_raw(tmp_path / "root", src)


def test_corrupt_cache_is_healed_from_the_packaged_copy(tmp_path):
    raw = prepare_mnist_raw(tmp_path)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"garbage")
    prepare_mnist_raw(tmp_path)
    d = load_dataset("mnist", val_size=10, root=tmp_path)
    assert len(d.train_y) == 59990


def test_verified_files_are_not_hashed_again_until_they_change(tmp_path, monkeypatch):
    import nnopt_cli.data as data

    raw = prepare_mnist_raw(tmp_path)
    hashed = []
    real_md5 = data._md5
    monkeypatch.setattr(data, "_md5", lambda p: hashed.append(p.name) or real_md5(p))
    prepare_mnist_raw(tmp_path)
    assert hashed == []  # size and mtime as recorded: no 55 MB re-read
    target = raw / "t10k-labels-idx1-ubyte"
    blob = bytearray(target.read_bytes())
    blob[100] ^= 0xFF  # same size, other content, a newer mtime
    target.write_bytes(bytes(blob))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    prepare_mnist_raw(tmp_path)
    assert hashed == ["t10k-labels-idx1-ubyte"]
    assert data._md5(target) == MNIST_MD5["t10k-labels-idx1-ubyte"]  # healed from the packaged copy


def test_offline_torchvision_dataset_says_where_to_put_files(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tvm

    monkeypatch.setattr(tvm.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens there
    with pytest.raises(DataError, match=r"fashion_mnist.*FashionMNIST/raw"):
        load_dataset("fashion_mnist", val_size=10, root=tmp_path, download=True)


def test_unknown_dataset_and_bad_val_size():
    with pytest.raises(ConfigError, match="dataset.name"):
        load_dataset("cifar", val_size=10)
    with pytest.raises(ConfigError, match="dataset.val_size"):
        load_dataset("synthetic", val_size=2000, n_train=100, n_test=10)


def test_idx_reader_matches_torchvision_and_refuses_a_cut_file(tmp_path):
    import torchvision.datasets as tvd

    from nnopt_cli.data import default_root, prepare_mnist_raw, read_idx

    raw = prepare_mnist_raw(default_root())
    ds = tvd.MNIST(str(default_root()), train=False)  # torchvision's own reading of the same files
    assert torch.equal(read_idx(raw / "t10k-images-idx3-ubyte"), ds.data)
    assert torch.equal(read_idx(raw / "t10k-labels-idx1-ubyte").long(), ds.targets)
    cut = tmp_path / "cut"
    cut.write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes()[:100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(cut)
