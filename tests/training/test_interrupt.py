"""Ctrl-C / SIGTERM: stop at a step boundary, checkpoint, summary `interrupted`, exit 130 / 143."""

from __future__ import annotations

import json
import signal
import time

import pytest

import nnopt_cli.run.recipe as runner
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store.checkpoint import load_checkpoint
from nnopt_cli.store.folder import read_metrics
from nnopt_cli.training.interrupt import Interrupt
from tests.conftest import TINY, compose_cfg
from tests.run.test_resume import assert_same_run, start_cli, wait_for_rows


def test_first_signal_requests_a_stop_second_exits_at_once():
    exits = []
    before = signal.getsignal(signal.SIGINT)
    with Interrupt(hard_exit=exits.append) as interrupt:
        assert not interrupt.requested
        signal.raise_signal(signal.SIGTERM)
        assert interrupt.requested and interrupt.name == "SIGTERM" and interrupt.exit_code == 143
        assert exits == []
        signal.raise_signal(signal.SIGINT)  # the second one: out now
        assert exits == [130]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


class StopAfter(Interrupt):
    """An interrupt that 'arrives' after `reads` looks at the flag, i.e. at a chosen step boundary."""

    def __init__(self, reads: int):
        super().__init__()
        self.left = reads

    @property
    def requested(self) -> bool:
        self.left -= 1
        if self.left < 0 and self.signum is None:
            self.signum = signal.SIGTERM
        return self.signum is not None


@pytest.mark.parametrize("reads", [3, 11, 16])  # mid epoch 1, the epoch 1 / 2 boundary, mid epoch 2
def test_interrupt_mid_epoch_then_resume_is_bit_exact(reads, tmp_path, monkeypatch):
    # 320 training samples / 32 = 10 steps per epoch; one flag look per step and per epoch start
    cfg = compose_cfg("epochs=3", "batch_size.size=32", "model.dropout=0.3", "scheduler=onecycle",
                      "dataset.n_train=384", "dataset.val_size=64")
    train(cfg, RunContext(tmp_path / "alone"))
    with monkeypatch.context() as m:
        m.setattr(runner, "Interrupt", lambda: StopAfter(reads))
        summary = train(cfg, RunContext(tmp_path / "cut"))
    assert summary["status"] == "interrupted" and summary["exit_code"] == 143
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    partial = ckpt["trainer"]["partial_epoch"]
    assert (partial is None) == (reads == 11)
    on_disk = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert on_disk["status"] == "interrupted" and "resume=" in on_disk["message"]
    train(cfg, RunContext(tmp_path / "cut", resume=True))
    assert_same_run(tmp_path / "alone", tmp_path / "cut")


def test_real_sigint_during_training_checkpoints_and_reports(tmp_path, monkeypatch):
    cfg = compose_cfg("epochs=3")
    original = runner.evaluate_split

    def evaluate_split(*args, **kwargs):  # Ctrl-C arrives while epoch 1 is being validated
        signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_split", evaluate_split)
    summary = train(cfg, RunContext(tmp_path))
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT" and summary["exit_code"] == 130
    assert summary["epochs"] == 1 and len(read_metrics(tmp_path / "metrics.jsonl")) == 1
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


LONG_RUN = [o for o in TINY if not o.startswith(("dataset.n_train", "epochs", "batch_size.size"))] + [
    "dataset.n_train=3000", "epochs=30", "batch_size.size=8"]


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_exits_128_plus_signal_with_summary_and_checkpoint(sig, code, tmp_path):
    proc = start_cli([*LONG_RUN, "hydra.run.dir=run"], tmp_path)
    run = wait_for_rows(lambda: [tmp_path / "run"], proc, 1)
    assert run is not None, proc.stderr.read()
    time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and f"interrupted by {signal.Signals(sig).name}" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["exit_code"] == code
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["metrics"] == read_metrics(run / "metrics.jsonl")
    assert ckpt["progress"]["epoch"] == summary["epochs"] >= 1
