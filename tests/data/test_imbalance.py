"""dataset.imbalance: long-tailed training classes by the exponential profile, seeded, the
validation and test splits untouched; bad ratios are one line."""

from __future__ import annotations

import math

import pytest
import torch

from nnopt_cli.data import load_splits
from nnopt_cli.errors import ConfigError
from nnopt_cli.run.validate import validate
from tests.conftest import compose_cfg


def dataset(*overrides: str) -> dict:
    tiny = not any(o.startswith("dataset=") for o in overrides)
    return compose_cfg(*overrides, tiny=tiny)["dataset"]


def test_class_counts_follow_the_exponential_profile_exactly():
    plain = load_splits(dataset("dataset.n_train=2000"))
    got = load_splits(dataset("dataset.n_train=2000", "dataset.imbalance=10"))
    available = torch.bincount(plain.train_y, minlength=10).tolist()
    n_max = min(available)  # the most every class can give
    expected = [math.floor(n_max * 10 ** (-c / 9)) for c in range(10)]
    assert torch.bincount(got.train_y, minlength=10).tolist() == expected
    assert expected[0] == n_max and expected[9] == math.floor(n_max / 10)
    # only the training split changes: validation is carved as without imbalance, test untouched
    assert torch.equal(got.val_y, plain.val_y) and torch.equal(got.test_y, plain.test_y)
    # each kept sample is one of the plain split's, with its label, none twice; the inputs are
    # normalized by the kept samples' mean and std, so undo that affine map (fitted on test) first
    # (float32 rounding leaves ~0.02 over 784 pixels; distinct samples are ~30 apart)
    k = plain.test_x.std() / got.test_x.std()
    mapped = (k * got.train_x + plain.test_x.mean() - k * got.test_x.mean()).flatten(1)
    dist, nearest = torch.cdist(mapped, plain.train_x.flatten(1)).min(1)
    assert dist.max() < 0.1 and len(set(nearest.tolist())) == len(nearest)
    assert torch.equal(plain.train_y[nearest], got.train_y)


def test_subsampling_is_seeded_by_the_split_seed():
    a = load_splits(dataset("dataset.imbalance=5"))
    b = load_splits(dataset("dataset.imbalance=5"))
    c = load_splits(dataset("dataset.imbalance=5", "dataset.split_seed=1"))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x[:50], c.train_x[:50])


def test_mnist1d_takes_the_same_profile():
    node = ["dataset=mnist1d", "dataset.num_samples=400", "dataset.val_size=40"]
    plain = load_splits(dataset(*node))
    got = load_splits(dataset(*node, "dataset.imbalance=4"))
    n_max = min(torch.bincount(plain.train_y, minlength=10).tolist())
    assert torch.bincount(got.train_y, minlength=10).tolist() == [math.floor(n_max * 4 ** (-c / 9)) for c in range(10)]
    assert torch.equal(got.test_y, plain.test_y)


@pytest.mark.parametrize("ratio", ["0.5", "-1", "abc", "nan"])
def test_bad_ratios_are_one_line(ratio):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(f"dataset.imbalance={ratio}"))
    assert e.value.key == "dataset.imbalance" and "\n" not in str(e.value)


def test_a_ratio_that_empties_the_rarest_class_is_one_line():
    with pytest.raises(ConfigError) as e:
        load_splits(dataset("dataset.imbalance=100000"))
    assert e.value.key == "dataset.imbalance" and "would keep none" in str(e.value)


def test_your_own_data_takes_it_too(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.normal(size=(400, 3)).astype(np.float32), y_train=np.arange(400) % 4,
             x_test=rng.normal(size=(40, 3)).astype(np.float32), y_test=np.arange(40) % 4)
    node = ["dataset=npz", f"dataset.path={path}", "dataset.val_size=40"]
    plain = load_splits(dataset(*node))
    got = load_splits(dataset(*node, "dataset.imbalance=8"))
    n_max = min(torch.bincount(plain.train_y, minlength=4).tolist())
    assert torch.bincount(got.train_y, minlength=4).tolist() == [math.floor(n_max * 8 ** (-c / 3)) for c in range(4)]
    assert torch.equal(got.val_y, plain.val_y) and torch.equal(got.test_x, plain.test_x)
