"""DDP under torchrun: the rank shards, rank-0-only writes, and a real 2-process gloo run on CPU
that must match the single-process run of the same config, and post-training stages on rank 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from nnopt_cli.data import load_splits
from nnopt_cli.models import make_model
from nnopt_cli.post.load import load_stage_model
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store import layout
from nnopt_cli.store.folder import RunDir, read_metrics
from nnopt_cli.training import distributed
from nnopt_cli.training.metrics import evaluate
from tests.conftest import REPO, TINY, compose_cfg

# harder than TINY's default noise, so accuracies are not all 1.0 and a wrong count would show
DDP_ARGS = [*TINY, "dataset.noise=2.0", "epochs=3"]


# torch's gloo can abort a process at teardown ("terminate called without an active exception",
# pytorch/pytorch#190489 and the threads there); distributed.shutdown() waits for the peers to
# make that rare, and a run that hit it anyway is retried in a clean folder (twice at most)
TEARDOWN_ABORT = "terminate called without an active exception"


def with_checksums(names: set[str]) -> set[str]:
    """The files rank 0 may write: these, and the <file>.sha256 beside every .pt file."""
    return names | {f"{n}.sha256" for n in names if n.endswith(".pt")}


def torchrun(args, cwd, env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nnopt_cli",
           "train", *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    for _ in range(2):  # on a loaded machine the abort can strike twice running
        if out.returncode == 0 or TEARDOWN_ABORT not in out.stderr:
            break
        for child in cwd.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    return out


def shards(n, sizes, world, seed=0):
    """Every rank's batches for one epoch, from generators seeded alike (as on real ranks)."""
    per_rank = []
    for r in range(world):
        g = torch.Generator().manual_seed(seed)
        per_rank.append([idx for _, idx in distributed.epoch_batches(n, sizes, g, r, world)])
    return per_rank


def test_ranks_split_every_global_batch_and_cover_the_epoch_once():
    n, sizes, world = 103, [32, 32, 32, 7], 3
    (whole,) = shards(n, sizes, 1)
    per_rank = shards(n, sizes, world)
    for step, batch in enumerate(whole):
        parts = [per_rank[r][step] for r in range(world)]
        assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())  # same samples, no overlap
        assert max(map(len, parts)) - min(map(len, parts)) <= 1             # balanced shares
    assert sorted(torch.cat([torch.cat(b) for b in per_rank]).tolist()) == list(range(n))


def test_one_process_is_plain_shuffled_batching_and_each_epoch_reshuffles():
    g = torch.Generator().manual_seed(7)
    first = [idx for _, idx in distributed.epoch_batches(10, [4, 4, 2], g)]
    second = torch.cat([idx for _, idx in distributed.epoch_batches(10, [4, 4, 2], g)])
    assert torch.equal(torch.cat(first), torch.randperm(10, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(torch.cat(first), second) and sorted(second.tolist()) == list(range(10))


def test_other_ranks_read_the_run_folder_but_never_write_it(tmp_path):
    run = RunDir(tmp_path)
    view = distributed._Rank0Writes(run)
    view.write_summary({"status": "running"})
    view.append_metrics({"epoch": 1})
    view.save_model(torch.nn.Linear(2, 2))
    assert list(tmp_path.iterdir()) == [] and view.path == run.path
    assert distributed.rank0_writes(run) is run  # a single process is rank 0


def test_multirun_under_torchrun_is_refused_in_one_line(monkeypatch, capsys):
    from nnopt_cli.cli.train import run

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exc:
        run(["-m", "optimizer=sgd,adam"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("nnopt: error: --multirun does not combine with torchrun")


@pytest.mark.slow
def test_two_gloo_processes_train_like_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("NNOPT_DEBUG", None)
    out = torchrun(DDP_ARGS, tmp_path, env)
    assert out.returncode == 0, out.stderr[-3000:]

    # both ranks used one folder (rank 0's ${now}), and only rank 0 wrote into it
    outputs = tmp_path / "outputs"
    (folder,) = {p.parent for p in outputs.rglob("summary.json")}
    assert {p for p in outputs.rglob("*") if p.is_dir() and not p.is_symlink()} == {folder, folder / ".hydra", folder.parent}
    assert (outputs / layout.LATEST).resolve() == folder.resolve()  # rank 0 alone made the link
    written = {".hydra", "metrics.jsonl", "summary.json", "model.pt", "model.init.pt", "train.log", ".nnopt.lock"}
    assert written <= {p.name for p in folder.iterdir()} <= with_checksums(written | {"checkpoint.pt"})
    assert (folder / "train.log").read_text().count("test/acc=") == 1
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    ddp = read_metrics(folder / "metrics.jsonl")
    assert [r["epoch"] for r in ddp] == [1, 2, 3]

    # the reduced metrics are those of the whole splits: re-score the saved model on them
    cfg = compose_cfg(*DDP_ARGS[len(TINY):])
    data = load_splits(cfg["dataset"])
    model = make_model(cfg, data.input_shape, data.num_classes)
    model.load_state_dict(torch.load(folder / "model.pt"))
    assert evaluate(model, data.val_x, data.val_y, 1024)[1] == ddp[-1]["val/acc"]
    assert evaluate(model, data.test_x, data.test_y, 1024)[1] == summary["test/acc"]
    n_train = len(data.train_x)
    assert all(abs(r["train/acc"] * n_train - round(r["train/acc"] * n_train)) < 1e-6 for r in ddp)

    # same seed, same global batch: each step averages the same samples' gradients as one process
    train(cfg, RunContext(run_dir=tmp_path / "single", live_progress=False))
    single = read_metrics(tmp_path / "single" / "metrics.jsonl")
    for a, b in zip(ddp, single, strict=True):
        assert abs(a["train/acc"] - b["train/acc"]) <= 1 / n_train + 1e-9
        assert abs(a["val/acc"] - b["val/acc"]) <= 1 / len(data.val_x) + 1e-9
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-3)
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-3)


@pytest.mark.slow
def test_post_training_stages_run_on_rank0_alone_after_ddp_training(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("NNOPT_DEBUG", None)
    stage_args = ["post=prune", "post.prune.rounds=1", "post.prune.finetune_epochs=1", "post.prune.sparsity=0.5",
                  "post.measure.latency_repeats=2", "post.measure.latency_warmup=0", "post.measure.latency_batch_sizes=[1]"]
    out = torchrun([*DDP_ARGS, *stage_args], tmp_path, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr

    outputs = tmp_path / "outputs"
    (folder,) = {p.parent for p in outputs.rglob("summary.json")}
    assert {p for p in outputs.rglob("*") if p.is_dir() and not p.is_symlink()} == {folder, folder / ".hydra", folder.parent}
    assert (outputs / layout.LATEST).resolve() == folder.resolve()  # rank 0 alone made the link
    written = {".hydra", "metrics.jsonl", "summary.json", "model.pt", "model.init.pt", "model.pruned.pt", "train.log",
               ".nnopt.lock"}
    assert written <= {p.name for p in folder.iterdir()} <= with_checksums(written | {"checkpoint.pt"})
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    (stage,) = summary["stages"]
    assert stage["name"] == "prune" and stage["status"] == "completed" and stage["file"] == "model.pruned.pt"
    assert stage["after"]["sparsity"] >= 0.49
    # one process ran the stage: one fine-tuning epoch in the metrics, one stage line in the log
    rows = read_metrics(folder / "metrics.jsonl")
    assert [r["epoch"] for r in rows if "stage" not in r] == [1, 2, 3]
    assert [(r["stage"], r["epoch"]) for r in rows if "stage" in r] == [("prune", 1)]
    assert (folder / "train.log").read_text().count("prune: test/acc") == 1

    # the stage scored the whole test split (rank 0 alone, no sharding): re-score the saved model
    cfg = compose_cfg(*DDP_ARGS[len(TINY):])
    data = load_splits(cfg["dataset"])
    pruned = load_stage_model(folder, "model.pruned.pt")
    assert evaluate(pruned, data.test_x, data.test_y, 1024)[1] == stage["after"]["test/acc"]


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_nccl_processes_take_one_gpu_each(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = torchrun([*DDP_ARGS, "device=cuda", "hydra.run.dir=ddp"], tmp_path, env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["device"] == "cuda:0"
