"""logger=wandb (an optional extra): an offline W&B run inside the run folder, read back record by
record with wandb's own protobuf messages; without the package, one line naming the pip command."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from nnopt_cli.errors import NnoptError
from nnopt_cli.loggers.wandb import INSTALL_HINT, WandbLogger, wandb_mode
from nnopt_cli.store import layout
from tests.conftest import compose_cfg
from tests.loggers.test_tensorboard import hydra_files

BLOCK = 32768  # the .wandb file is a LevelDB log: 32 KiB blocks of records with a 7-byte header each


def wandb_records(path: Path) -> list:
    """Every record of an offline run's .wandb file, parsed with wandb's own protobuf message."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # the block's tail is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_missing_wandb_is_one_line_naming_the_pip_command(monkeypatch):
    real_import = builtins.__import__

    def no_wandb(name, *args, **kw):
        if name == "wandb" or name.startswith("wandb."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(NnoptError) as e:
        WandbLogger()
    assert str(e.value) == INSTALL_HINT and "pip install wandb" in str(e.value) and "\n" not in str(e.value)


def test_offline_unless_the_user_chose_a_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode() == "online"
    with pytest.raises(NnoptError, match=r"^invalid config: logger.wandb.project='': a W&B project name$"):
        WandbLogger(project="")


def test_a_run_reads_back_from_its_offline_wandb_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from nnopt_cli.run.recipe import RunContext, train

    monkeypatch.delenv("WANDB_MODE", raising=False)  # never the network: the default is offline
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # the run folder wins over W&B's own default
    cfg = compose_cfg("logger=[csv,wandb]", "epochs=2", "name=base", "tags=[paper]")
    run_dir = tmp_path / "run"
    hydra_files(run_dir, {"optimizer": "adam"}, ["name=base"])
    summary = train(cfg, RunContext(run_dir=run_dir, live_progress=False))
    rows = [json.loads(r) for r in (run_dir / layout.METRICS).read_text().splitlines()]

    (offline,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")  # inside the run folder, offline
    records = wandb_records(offline)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "base" and list(run.tags) == ["paper"] and run.project == "nnopt"
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["optimizer"] == "adam" and config["name"] == "base" and config["epochs"] == 2
    history = [({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}, r.history.step.num)
               for r in records if r.WhichOneof("record_type") == "history"]
    val_acc = [(step, items["val/acc"]) for items, step in history if "val/acc" in items]
    assert val_acc == [(r["total_steps"], pytest.approx(r["val/acc"])) for r in rows]
    final = [items for items, _ in history if "test/acc" in items]
    assert final and final[-1]["test/acc"] == pytest.approx(summary["test/acc"])
    assert history[-1][1] == rows[-1]["total_steps"]  # the final numbers at the last epoch's step
    (end,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert end.exit_code == 0 and kinds.index("run") < kinds.index("exit")
    assert (run_dir / layout.METRICS_CSV).is_file()  # with the other logger chosen beside it
    assert not (tmp_path / "elsewhere").exists()


def test_a_resumed_run_goes_on_in_the_same_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from nnopt_cli.training.observers import EpochInfo, RunInfo

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_cfg("logger=wandb", "name=base")
    first = WandbLogger()
    first.on_run_start(RunInfo(cfg=cfg, run_dir=tmp_path, model=None, optimizer=None, train_x=None, train_y=None))
    first.on_epoch_end(EpochInfo(epoch=1, step=5, row={"epoch": 1, "val/acc": 0.5}, model=None, optimizer=None))
    first.on_run_end({"status": "interrupted"})
    resumed = WandbLogger()
    resumed.load_state_dict(first.state_dict())  # what the checkpoint carries
    resumed.on_run_start(RunInfo(cfg=cfg, run_dir=tmp_path, model=None, optimizer=None, train_x=None, train_y=None))
    resumed.on_epoch_end(EpochInfo(epoch=2, step=10, row={"epoch": 2, "val/acc": 0.75}, model=None, optimizer=None))
    resumed.on_run_end({"status": "completed", "test/acc": 0.7})
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and {f.name for f in files} == {f"run-{first.run_id}.wandb"}
    ids = [[r.run.run_id for r in wandb_records(f) if r.WhichOneof("record_type") == "run"] for f in files]
    assert ids == [[first.run_id], [first.run_id]]
    exits = [[r.exit.exit_code for r in wandb_records(f) if r.WhichOneof("record_type") == "exit"] for f in files]
    assert sorted(exits) == [[0], [130]]
