"""The jobs of an in-process sweep share the prepared dataset: the same tensors for the same dataset
settings, never another setting's, and never tensors a run changed in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnopt_cli import data
from nnopt_cli.training.observers import Observer, RunInfo
from tests.conftest import TINY, compose_cfg, run_cli

SYNTHETIC = {"val_size": 64, "n_train": 384, "n_test": 128}
FIELDS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


def summarize(t) -> list:
    flat = t.detach().double().flatten()
    return [list(t.shape), flat.abs().sum().item(), flat[:8].tolist()]


def close(seen: list, want: list) -> bool:
    """Equal up to float rounding: a process with other torch threads normalizes with a mean that
    can differ in the last bit."""
    return seen[0] == want[0] and seen[1:] == [pytest.approx(want[1], rel=1e-5),
                                              pytest.approx(want[2], rel=1e-5, abs=1e-6)]


def fingerprint(splits) -> dict:
    return {k: summarize(getattr(splits, k)) for k in FIELDS}


def test_same_settings_share_the_tensors_other_settings_get_their_own():
    data.share_loaded_for_this_process()
    a = data.load_dataset("synthetic", **SYNTHETIC)
    b = data.load_dataset("synthetic", **SYNTHETIC)
    other = data.load_dataset("synthetic", **{**SYNTHETIC, "n_train": 512})
    assert all(getattr(a, k) is getattr(b, k) for k in FIELDS)
    assert a is not b  # a Splits of its own: rebinding a field changes no other caller's
    b.train_x = b.train_x[:10]
    assert len(data.load_dataset("synthetic", **SYNTHETIC).train_x) == 384 - 64
    assert len(other.train_x) == 512 - 64 and other.train_x is not a.train_x
    assert fingerprint(other) == fingerprint(data._load("synthetic", **{**SYNTHETIC, "n_train": 512}))


@pytest.mark.parametrize("change", [
    lambda s: s.train_x.mul_(2),
    lambda s: s.test_x[:5].zero_(),  # through a view
    lambda s: s.val_y.detach().fill_(0),  # through a detached alias
])
def test_tensors_changed_in_place_are_prepared_again(change):
    data.share_loaded_for_this_process()
    first = data.load_dataset("synthetic", **SYNTHETIC)
    fresh = fingerprint(data._load("synthetic", **SYNTHETIC))
    change(first)
    assert fingerprint(first) != fresh
    again = data.load_dataset("synthetic", **SYNTHETIC)
    assert fingerprint(again) == fresh
    assert again.train_x is not first.train_x
    assert data.load_dataset("synthetic", **SYNTHETIC).train_x is again.train_x  # shared again from then on


def test_keep_loaded_still_hands_out_copies():
    with data.keep_loaded():
        a = data.load_dataset("synthetic", **SYNTHETIC)
        a.train_x.mul_(0)
        b = data.load_dataset("synthetic", **SYNTHETIC)
    assert b.train_x is not a.train_x and b.train_x.abs().sum() > 0


class RecordData(Observer):
    """Writes what the run was given (each tensor's address, shape and sum) into its folder, then
    changes the training inputs in place when `scale` is set."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def on_run_start(self, run: RunInfo) -> None:
        seen = {"ptr": run.train_x.data_ptr(), **{k: summarize(getattr(run, k)) for k in ("train_x", "train_y")}}
        (Path(run.run_dir) / "seen.json").write_text(json.dumps(seen))
        if self.scale != 1.0:
            run.train_x.mul_(self.scale)


def seen_by_job(sweep: Path) -> dict[str, dict]:
    got = {}
    for path in sweep.glob("*/seen.json"):
        overrides = (path.parent / ".hydra" / "overrides.yaml").read_text()
        got[overrides] = {**json.loads(path.read_text()), "overrides": overrides}
    return got


def expected(*overrides: str) -> dict:
    splits = data.load_splits(compose_cfg("epochs=1", *overrides)["dataset"])
    return {k: fingerprint(splits)[k] for k in ("train_x", "train_y")}


RECORD = "+observers.rec._target_=tests.data.test_shared_splits.RecordData"


@pytest.mark.slow
def test_sweep_jobs_with_other_dataset_settings_get_their_own_data(tmp_path):
    out = run_cli("train", "-m", *TINY, "epochs=1", RECORD, "dataset.n_train=384,512", "dataset.split_seed=0,1",
                  "hydra.sweep.dir=sw", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    seen = list(seen_by_job(tmp_path / "sw").values())
    assert len(seen) == 4
    for job in seen:
        n_train = 512 if "n_train=512" in job["overrides"] else 384
        split_seed = 1 if "split_seed=1" in job["overrides"] else 0
        want = expected(f"dataset.n_train={n_train}", f"dataset.split_seed={split_seed}")
        assert all(close(job[k], want[k]) for k in want), job["overrides"]
    assert len({job["ptr"] for job in seen}) == 4  # four settings, four datasets


@pytest.mark.slow
def test_sweep_jobs_share_one_dataset_and_never_one_a_job_changed(tmp_path):
    same = run_cli("train", "-m", *TINY, "epochs=1", RECORD, "seed=0,1,2", "hydra.sweep.dir=same", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    seen = list(seen_by_job(tmp_path / "same").values())
    assert len(seen) == 3 and len({job["ptr"] for job in seen}) == 1  # prepared once, the same tensors
    # every job changes its training inputs in place: the next job gets them prepared again
    changed = run_cli("train", "-m", *TINY, "epochs=1", RECORD, "+observers.rec.scale=3.0", "seed=0,1,2",
                      "hydra.sweep.dir=changed", cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr
    want = expected()
    seen = list(seen_by_job(tmp_path / "changed").values())
    assert len(seen) == 3
    assert all(close(job[k], want[k]) for job in seen for k in want)
