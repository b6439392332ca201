"""One thread or every core: how fast is an epoch, idle and with another process on the cores? (`make bench`)

For each model (the MNIST MLP, the MNIST-1D MLP, the CNN on MNIST) and each variant of torch's thread
pool (the default; OMP_WAIT_POLICY=PASSIVE, so idle OpenMP threads sleep instead of spinning;
torch.set_num_interop_threads(1)), a fresh process times one training epoch (plain loop, Adam, batch
128, + validation) with 1 thread against every core, in ABBA rounds (1, all, all, 1, then all, 1, 1,
all, ...): each ratio all/1 is taken within a round, the median over rounds is reported. Then the
same again while one CPU-bound process per core (`while True: pass`) competes for the cores: the
script starts them and kills them after. The load average at the time is printed with each line.

`--muon` times instead, with 1 thread (`--threads N`), one MNIST MLP epoch of nnopt's Trainer with `optimizer=muon`
against `optimizer=adamw` (ABBA rounds, ratio Muon / AdamW), and Muon once more with its
Newton-Schulz iterations in float32 instead of torch's bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

MODELS = {  # name: (model config, dataset)
    "mlp": ("mlp", "mnist"),
    "mlp-mnist1d": ("mlp", "mnist1d"),
    "cnn": ("cnn", "mnist"),
}
VARIANTS = {  # name: (extra environment, interop threads)
    "default": ({}, None),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "interop=1": ({}, 1),
}


def worker(model_key: str, train_size: int, rounds: int, interop: int | None) -> dict:
    """In this process: median s/epoch at 1 thread and at every core, and the median ratio all/1."""
    import torch

    if interop is not None:
        torch.set_num_interop_threads(interop)  # before any parallel work, or torch refuses it
    from benchmarks.epoch_overhead import palindrome_rounds, plain_epoch
    from nnopt_cli.data import load_dataset
    from nnopt_cli.models import make_model
    from nnopt_cli.training.device import available_cores
    from tests.conftest import compose_cfg

    model_name, dataset = MODELS[model_key]
    cfg = compose_cfg(f"model={model_name}", f"dataset={dataset}", "device=cpu", tiny=False)
    data = load_dataset(dataset, val_size=cfg["dataset"]["val_size"])
    x, y = data.train_x[:train_size], data.train_y[:train_size]
    torch.manual_seed(0)
    model = make_model(cfg, data.input_shape, data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # one model for both: see epoch_overhead.py
    gen = torch.Generator().manual_seed(0)
    cores = available_cores()

    def epoch(threads):
        def run():
            torch.set_num_threads(threads)
            plain_epoch(model, opt, x, y, data.val_x, data.val_y, 128, gen)
        return run

    epoch(cores)()  # warm-up: allocator, kernels, both thread pools started
    epoch(1)()
    out = palindrome_rounds({"1": epoch(1), "all": epoch(cores)}, rounds)
    return {"cores": cores, "train": len(x),
            "one": statistics.median(t for t, _, _ in out["1"]),
            "all": statistics.median(t for t, _, _ in out["all"]),
            "ratio": statistics.median(r for _, r, _ in out["all"]),
            "ratios": [round(r, 3) for _, r, _ in out["all"]]}


def newton_schulz_float32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's orthogonalization (torch/optim/_muon.py) in float32 instead of bfloat16."""
    import torch

    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


def muon_rounds(train_size: int, rounds: int, threads: int = 1) -> dict:
    """s/epoch of nnopt's Trainer with AdamW, Muon, and Muon with float32 Newton-Schulz."""
    import torch
    import torch.optim._muon as torch_muon

    from benchmarks.epoch_overhead import palindrome_rounds
    from nnopt_cli.data import load_dataset
    from nnopt_cli.models import make_model
    from nnopt_cli.training.trainer import Trainer
    from tests.conftest import compose_cfg

    torch.set_num_threads(threads)
    data = load_dataset("mnist", val_size=5000)
    x, y = data.train_x[:train_size], data.train_y[:train_size]
    trainers = {}
    for name in ("adamw", "muon"):
        cfg = compose_cfg(f"optimizer={name}", "device=cpu", tiny=False)
        torch.manual_seed(0)
        trainers[name] = Trainer(cfg, make_model(cfg, data.input_shape, 10), len(x), torch.device("cpu"))
    bf16 = torch_muon._zeropower_via_newtonschulz

    def epoch(name, ns):
        def run(n=[0]):  # noqa: B006 - a counter across calls
            n[0] += 1
            torch_muon._zeropower_via_newtonschulz = ns
            try:
                trainers[name].train_epoch(n[0], x, y)
            finally:
                torch_muon._zeropower_via_newtonschulz = bf16
        return run

    adamw = epoch("adamw", bf16)
    adamw()
    epoch("muon", bf16)()
    out = {"muon": palindrome_rounds({"adamw": adamw, "muon": epoch("muon", bf16)}, rounds),
           "muon fp32": palindrome_rounds({"adamw": adamw, "muon fp32": epoch("muon", newton_schulz_float32)}, rounds)}
    return {name: (statistics.median(t for t, _, _ in r["adamw"]), statistics.median(t for t, _, _ in r[name]),
                   statistics.median(q for _, q, _ in r[name])) for name, r in out.items()}


def run_worker(model_key: str, variant: str, train_size: int, rounds: int, timeout: float) -> dict | None:
    env_extra, interop = VARIANTS[variant]
    cmd = [sys.executable, "-m", "benchmarks.threads", "--worker", model_key, "--train-size", str(train_size),
           "--rounds", str(rounds)]
    if interop is not None:
        cmd += ["--interop", str(interop)]
    load0 = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, env={**os.environ, **env_extra}, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        sys.exit(f"worker failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load"] = (load0 + os.getloadavg()[0]) / 2
    return result


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--conditions", default="idle,busy", help="idle, busy (one busy loop per core)")
    parser.add_argument("--rounds", type=int, default=3, help="ABBA rounds per line")
    parser.add_argument("--train-size", type=int, default=55000, help="training samples per epoch (at most)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per line before it is reported as such")
    parser.add_argument("--muon", action="store_true", help="Muon against AdamW instead")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for --muon")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--interop", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.train_size, args.rounds, args.interop)))
        return

    if args.muon:
        print(f"MNIST MLP, {min(args.train_size, 55000)} training images per epoch, batch 128, {args.threads} thread(s), "
              f"nnopt's Trainer; median of {args.rounds} ABBA rounds; load {os.getloadavg()[0]:.1f}")
        for name, (adamw, muon, ratio) in muon_rounds(args.train_size, args.rounds, args.threads).items():
            print(f"{name:10} {muon:6.2f} s/epoch against AdamW {adamw:6.2f} s/epoch: {ratio:5.2f}x")
        print(f"load {os.getloadavg()[0]:.1f} at the end")
        return

    from nnopt_cli.training.device import available_cores

    cores = available_cores()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {cores} cores, Python "
          f"{platform.python_version()}; ratio = s/epoch with every core / s/epoch with 1 thread "
          f"(median of {args.rounds} ABBA rounds, same process); busy = {cores} `while True: pass` processes")
    print(f"{'condition':9} {'model':12} {'variant':24} {'load':>5} {'1 thread s':>10} {'all s':>8} {'all/1':>6}  rounds")
    for condition in args.conditions.split(","):
        loops = busy_loops(cores) if condition == "busy" else []
        try:
            if loops:
                time.sleep(2)  # the loops are running before the first epoch
            for model_key in args.models.split(","):
                for variant in args.variants.split(","):
                    r = run_worker(model_key, variant, args.train_size, args.rounds, args.timeout)
                    if r is None:
                        print(f"{condition:9} {model_key:12} {variant:24} over {args.timeout:.0f} s", flush=True)
                        continue
                    print(f"{condition:9} {model_key:12} {variant:24} {r['load']:5.1f} {r['one']:10.2f} "
                          f"{r['all']:8.2f} {r['ratio']:6.2f}  {r['ratios']}", flush=True)
        finally:
            for p in loops:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
