"""What one epoch-end checkpoint costs, early and late in a run (MNIST-1D MLP, the default config).

In one process: one real `nnopt train epochs=1` run gives a metrics row as nnopt writes it, and a
model and Adam state trained for an epoch. Then make_checkpoint + RunDir.save_checkpoint (torch.save,
sha256, temporary file, fsyncs, renames: what `nnopt train` does at each epoch end) is timed with the
rows of 1, 30 and 150 epochs, the earlier rows encoded by earlier checkpoints as in a run. The same
checkpoint with its rows pickled as a list of dicts (how format 2 stored them) is timed alongside, in
alternating order. Each line is the median of `--repeats`; the ratios are to the same layout's epoch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nnopt_cli.data import load_splits
from nnopt_cli.models import make_model
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store import layout
from nnopt_cli.store.checkpoint import RowsText, make_checkpoint
from nnopt_cli.store.folder import RunDir
from nnopt_cli.training.trainer import Trainer
from tests.conftest import compose_cfg

EPOCHS = (1, 30, 150)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = compose_cfg("dataset=mnist1d", "device=cpu", "threads=1", tiny=False)
    work = Path(tempfile.mkdtemp(prefix="nnopt-bench-ckpt-"))
    train({**cfg, "epochs": 1}, RunContext(work / "one-epoch", live_progress=False))
    row = json.loads((work / "one-epoch" / layout.METRICS).read_text().splitlines()[0])

    data = load_splits(cfg["dataset"])
    torch.manual_seed(0)
    model = make_model(cfg, data.input_shape, data.num_classes)
    trainer = Trainer(cfg, model, len(data.train_x), torch.device("cpu"))
    trainer.train_epoch(1, data.train_x, data.train_y)
    run = RunDir(work / "run")
    progress = {"epoch": 1, "best_val_acc": row["val/acc"], "best_val_epoch": 1, "best_val_loss": row["val/loss"],
                "train_time_s": row["train_s"], "stop_reason": "max_epochs", "epoch_elapsed_s": 0.0}

    def checkpoint(rows: list[dict], layout_name: str) -> float:
        rows_text = RowsText()
        rows_text.text(rows[:-1])  # the earlier epochs' checkpoints encoded their rows
        t0 = time.perf_counter()
        ckpt = make_checkpoint(cfg, model, trainer, None, torch.device("cpu"), progress, rows, rows_text)
        if layout_name == "format 2":
            ckpt = {**ckpt, "metrics": rows}
        run.save_checkpoint(ckpt)
        return time.perf_counter() - t0

    print(f"MNIST-1D MLP ({sum(p.numel() for p in model.parameters())} parameters, Adam), a row of "
          f"{len(row)} keys; {args.repeats} repeats; load average {os.getloadavg()[0]:.2f}")
    print(f"{'epoch':>6} {'rows as JSON text ms':>21} {'(x epoch 1)':>11} {'file KB':>8} "
          f"{'rows pickled (format 2) ms':>27} {'(x epoch 1)':>11} {'file KB':>8}")
    first = {}
    for n in EPOCHS:
        rows = [{**row, "epoch": i + 1} for i in range(n)]
        took: dict[str, list[float]] = {"format 3": [], "format 2": []}
        size = {}
        for r in range(args.repeats):
            for name in (["format 3", "format 2"] if r % 2 == 0 else ["format 2", "format 3"]):
                took[name].append(checkpoint(rows, name))
                size[name] = run.checkpoint_path.stat().st_size / 1024
        med = {k: statistics.median(v) for k, v in took.items()}
        first = first or med
        print(f"{n:6d} {med['format 3'] * 1e3:21.2f} {med['format 3'] / first['format 3']:11.2f} "
              f"{size['format 3']:8.0f} {med['format 2'] * 1e3:27.2f} {med['format 2'] / first['format 2']:11.2f} "
              f"{size['format 2']:8.0f}")


if __name__ == "__main__":
    main()
