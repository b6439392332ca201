"""How much does nnopt's runner cost over a hand-written loop? (`make bench`)

In one process, on the same preloaded MNIST tensors, time one epoch (training + validation) of:
  plain       a plain PyTorch loop over preloaded tensors (the baseline), on the same model and
              torch.optim.Adam objects as nnopt's epochs (alternating with them)
  nnopt       nnopt's Trainer.train_epoch + evaluate + the epoch-end writes (metrics.jsonl line,
              checkpoint.pt, both fsynced), as `nnopt train` runs them
  plain+sums  (MLP only) the plain loop plus the train loss/accuracy sums and divergence check nnopt
              keeps each step: what of nnopt's overhead is those metrics
  diag        (MLP only) nnopt's epoch with diagnostics=basic: the per-layer observer at its default interval
  dataloader  (MLP only, for context) the same loop fed by a DataLoader with ToTensor/Normalize
Each variant is timed against the plain loop in rounds of its own, ABBA (plain, X, X, plain, then
X, plain, plain, X, ...); each ratio is taken within a round, and the medians over rounds are
reported, with the plain loop against itself (A/A) as the noise floor of the machine.
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nnopt_cli.data import default_root, load_dataset
from nnopt_cli.models import make_model
from nnopt_cli.store.checkpoint import RowsText, make_checkpoint
from nnopt_cli.store.folder import RunDir
from nnopt_cli.training.metrics import EpochSums, evaluate
from nnopt_cli.training.observers import EpochInfo, RunInfo, build_observers
from nnopt_cli.training.trainer import Trainer
from tests.conftest import compose_cfg


def plain_epoch(model, opt, x, y, vx, vy, bs, gen, sums=False):
    """sums=True adds what nnopt's step adds to keep train/loss, train/acc and the divergence check
    (nnopt's own EpochSums, and a loss.item() per step)."""
    model.train()
    perm = torch.randperm(len(x), generator=gen)
    epoch_sums = EpochSums(x.device) if sums else None
    for i in range(0, len(x), bs):
        idx = perm[i:i + bs]
        xb, yb = x[idx], y[idx]
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if epoch_sums is not None:
            epoch_sums.add_step(out, yb, loss, len(idx))
            math.isfinite(loss.item())
    if epoch_sums is not None:
        epoch_sums.correct()
    model.eval()
    with torch.no_grad():
        correct = sum((model(vx[i:i + 2048]).argmax(1) == vy[i:i + 2048]).sum().item() for i in range(0, len(vx), 2048))
    return correct / len(vx)


def dataloader_epoch(model, opt, loader):
    model.train()
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(model_name: str, repeats: int, with_dataloader: bool) -> dict:
    cfg = compose_cfg(f"model={model_name}", "device=cpu", tiny=False)
    data = load_dataset("mnist", val_size=cfg["dataset"]["val_size"])
    bs = cfg["batch_size"]["size"]

    torch.manual_seed(0)
    nn_model = make_model(cfg, data.input_shape, 10)
    trainer = Trainer(cfg, nn_model, len(data.train_x), torch.device("cpu"))
    # The plain loop trains the very same model and Adam (epochs alternate): two instances of one
    # model differ by up to ~5% per epoch here from where their tensors landed in memory alone.
    plain_model, plain_opt = nn_model, trainer.optimizer
    assert isinstance(plain_opt, torch.optim.Adam) and plain_opt.defaults["lr"] == cfg["optimizer"]["lr"]
    gen = torch.Generator().manual_seed(0)

    run = RunDir(Path(tempfile.mkdtemp(prefix="nnopt-bench-")))
    rows: list[dict] = []
    rows_text = RowsText()  # as a run keeps it: each row encoded for the checkpoints once

    def nnopt_epoch(epoch=[0]):  # noqa: B006 - a counter across calls
        epoch[0] += 1
        row = {"epoch": epoch[0], **trainer.train_epoch(epoch[0], data.train_x, data.train_y)}
        row["val/loss"], row["val/acc"] = evaluate(nn_model, data.val_x, data.val_y, cfg["eval_batch_size"])
        rows.append(row)
        run.append_metrics(row)
        run.save_checkpoint(make_checkpoint(cfg, nn_model, trainer, None, torch.device("cpu"), metrics=rows,
                                            progress={"epoch": epoch[0]}, rows_text=rows_text))

    diag_epoch = None
    if with_dataloader:  # the MLP row: also the cost of diagnostics=basic
        dcfg = compose_cfg(f"model={model_name}", "device=cpu", "diagnostics=basic", tiny=False)
        torch.manual_seed(0)
        d_model = make_model(dcfg, data.input_shape, 10)
        observers = build_observers(dcfg)
        d_trainer = Trainer(dcfg, d_model, len(data.train_x), torch.device("cpu"), observers=observers)
        d_dir = Path(tempfile.mkdtemp(prefix="nnopt-bench-diag-"))
        observers.on_run_start(RunInfo(dcfg, d_dir, d_model, d_trainer.optimizer, data.train_x, data.train_y))

        def diag_epoch(epoch=[0]):  # noqa: B006 - a counter across calls
            epoch[0] += 1
            row = {"epoch": epoch[0], **d_trainer.train_epoch(epoch[0], data.train_x, data.train_y)}
            row["val/loss"], row["val/acc"] = evaluate(d_model, data.val_x, data.val_y, dcfg["eval_batch_size"])
            observers.on_epoch_end(EpochInfo(epoch[0], row, d_model, d_trainer.optimizer, d_trainer.counters.total_steps))

    loader = None
    if with_dataloader:
        import torchvision
        from torchvision import transforms

        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        ds = torchvision.datasets.MNIST(str(default_root()), train=True, transform=tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True)
        torch.manual_seed(0)
        dl_model = make_model(cfg, data.input_shape, 10)
        dl_opt = torch.optim.Adam(dl_model.parameters(), lr=cfg["optimizer"]["lr"])
    # warm-up (allocator, kernels) before timing
    plain_epoch(plain_model, plain_opt, data.train_x[:2048], data.train_y[:2048], data.val_x, data.val_y, bs, gen)
    epochs = {
        "plain": lambda: plain_epoch(plain_model, plain_opt, data.train_x, data.train_y, data.val_x, data.val_y, bs, gen),
        "nnopt": nnopt_epoch,
    }
    # the plain loop once more: the A/A ratio is what this machine's noise alone makes of equal work
    epochs["plain again"] = epochs["plain"]
    if diag_epoch is not None:
        epochs["plain+sums"] = lambda: plain_epoch(plain_model, plain_opt, data.train_x, data.train_y,
                                                   data.val_x, data.val_y, bs, gen, sums=True)
    # Each variant is compared with the plain loop in rounds of its own, ABBA (plain, X, X, plain,
    # then X, plain, plain, X): the two epochs compared are always neighbours, so a drift of the
    # machine's speed falls on both alike; each ratio is taken within a round, then the median over
    # rounds. (Rounds of all variants at once put a variant's epochs up to six epochs apart.) The
    # diagnostics run trains another model: its rounds compare it with nnopt's epoch.
    rounds = {}
    for name in [k for k in epochs if k != "plain"]:
        pair = palindrome_rounds({"plain": epochs["plain"], name: epochs[name]}, repeats)
        rounds[name] = pair[name]
        rounds.setdefault("plain", pair["plain"])  # the plain loop's seconds: from its rounds with nnopt
    result = {k: statistics.median(t for t, _, _ in v) for k, v in rounds.items()}
    result["ratio"] = {k: statistics.median(r for _, r, _ in v) for k, v in rounds.items()}
    result["faults"] = {k: statistics.median(f for _, _, f in v) for k, v in rounds.items()}
    if diag_epoch is not None:
        diag = palindrome_rounds({"nnopt": nnopt_epoch, "diag": diag_epoch}, max(repeats // 2, 1))["diag"]
        result["diag"] = statistics.median(t for t, _, _ in diag)
        result["ratio"]["diag/nnopt"] = statistics.median(r for _, r, _ in diag)
        result["faults"]["diag"] = statistics.median(f for _, _, f in diag)
    if loader is not None:  # one epoch is enough to show the gap
        result["dataloader"] = timed(lambda: dataloader_epoch(dl_model, dl_opt, loader))
    return result


def palindrome_rounds(epochs: dict, rounds: int) -> dict[str, list[tuple[float, float, float]]]:
    """Per variant and round: (mean seconds of its two epochs, its time / the first variant's time,
    mean minor page faults of its two epochs)."""
    names = list(epochs)
    out: dict[str, list[tuple[float, float, float]]] = {k: [] for k in names}
    for r in range(rounds):
        took, faults = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
        # each round starts with the next variant, so none is always the one at the rounds' seams
        # (two epochs of one variant back to back there): with two variants, ABBA then BAAB
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order + order[::-1]:
            f0 = minor_faults()
            took[k] += timed(epochs[k])
            faults[k] += minor_faults() - f0
        for k in names:
            out[k].append((took[k] / 2, took[k] / took[names[0]], faults[k] / 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="rounds; each runs every variant once")
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, MNIST 55,000 training images, batch 128, Adam")
    print(f"{'model':6} {'plain s/epoch':>14} {'nnopt s/epoch':>14} {'nnopt/plain':>12} {'A/A':>6} {'plain+sums':>11} "
          f"{'diagnostics=basic':>18} {'DataLoader s/epoch':>19}")
    for name in args.models.split(","):
        r = bench(name, args.repeats, with_dataloader=(name == "mlp"))
        ratio = r["ratio"]
        dl = f"{r['dataloader']:.2f} ({r['dataloader'] / r['plain']:.1f}x)" if "dataloader" in r else "-"
        diag = f"{r['diag']:.2f} ({ratio['diag/nnopt']:.3f}x)" if "diag" in r else "-"
        sums = f"{ratio['plain+sums']:.3f}" if "plain+sums" in ratio else "-"
        print(f"{name:6} {r['plain']:14.2f} {r['nnopt']:14.2f} {ratio['nnopt']:12.3f} {ratio['plain again']:6.3f} "
              f"{sums:>11} {diag:>18} {dl:>19}")
        faults = ", ".join(f"{k} {v:.0f}" for k, v in r["faults"].items())
        print(f"       minor page faults per epoch (median): {faults}")
    print("nnopt/plain, A/A (the plain loop against itself: the noise floor) and plain+sums: medians of ratios "
          "taken within each round; diagnostics=basic against nnopt's epoch")


if __name__ == "__main__":
    main()
