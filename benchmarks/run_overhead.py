"""What a run and a sweep job cost besides training (`make bench`), each the median of repeats:

  import torch      `python -c "import torch"`: the floor every command pays (and with one torch
                    optimizer built, which imports torch._dynamo: the floor of any training script)
  one run           `nnopt train epochs=1` wall time minus its training time (summary train_time_s)
  in-process sweep  `nnopt train -m epochs=1 seed=0..J-1` (basic launcher, one process): (wall minus the
                    sum of the jobs' training times) / J, and what each job more adds (J jobs against 2),
                    on MNIST and on MNIST-1D
  parallel          the same sweep under hydra/launcher=parallel (nnopt's: workers forked after the
                    imports) and hydra/launcher=joblib (loky: fresh Python workers), 2 workers each:
                    parallel / sequential wall; also with 5-epoch jobs
  study             the fair-tuning study of the README (`nnopt tune-lr` on MNIST-1D: 5 optimizers x
                    8 LRs x 3 seeds = 120 grid runs + the default LR over 3 seeds), wall time, once

Every command runs in a fresh process in a temporary folder, with the machine's normal environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(args)}\n{out.stderr[-2000:]}")
    return wall


def train_times(folder: Path) -> list[float]:
    return [json.loads(p.read_text())["train_time_s"] for p in folder.rglob("summary.json")]


def one_run(dataset: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        wall = run(["-m", "nnopt_cli", "train", f"dataset={dataset}", "epochs=1", "hydra.run.dir=run"], Path(tmp))
        return wall, sum(train_times(Path(tmp) / "run"))


def sweep(dataset: str, jobs: int, launcher: str | None = None, epochs: int = 1) -> tuple[float, float]:
    extra = [f"hydra/launcher={launcher}", "hydra.launcher.n_jobs=2"] if launcher else []
    seeds = ",".join(map(str, range(jobs)))
    with tempfile.TemporaryDirectory() as tmp:
        wall = run(["-m", "nnopt_cli", "train", "-m", f"dataset={dataset}", f"epochs={epochs}", f"seed={seeds}",
                    "hydra.sweep.dir=sweep", *extra], Path(tmp))
        return wall, sum(train_times(Path(tmp) / "sweep"))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


PARTS = ("torch", "run", "sweep", "launchers", "study")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--datasets", default="mnist,mnist1d")
    parser.add_argument("--no-study", dest="study", action="store_false", help="skip the tune-lr study (~1 min)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"what to measure, comma-separated among {','.join(PARTS)} (default: all)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--parts: {args.parts!r}; allowed: {', '.join(PARTS)}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    if "torch" in parts:
        torch_import, torch_adam = torch_floor(args.repeats)
        print(f"import torch: {torch_import:.2f} s; import torch + build one Adam: {torch_adam:.2f} s")
    for dataset in args.datasets.split(","):
        if "run" in parts:
            runs = [one_run(dataset) for _ in range(args.repeats)]
            fixed = median([wall - trained for wall, trained in runs])
            floors = (f" = import torch + {fixed - torch_import:.2f} s = import torch and Adam + "
                      f"{fixed - torch_adam:.2f} s") if "torch" in parts else ""
            print(f"{dataset}: one run epochs=1: fixed cost {fixed:.2f} s{floors} "
                  f"(wall {median([w for w, _ in runs]):.2f} s)")
        if "sweep" in parts or "launchers" in parts:
            sweeps(dataset, args.jobs, args.repeats, parts)
    if args.study and "study" in parts:
        study()


def torch_floor(repeats: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        torch_import = median([run(["-c", "import torch"], Path(tmp)) for _ in range(repeats)])
        # torch's first optimizer imports torch._dynamo (~1 s): every PyTorch training script pays it
        torch_adam = median([run(["-c", "import torch; torch.optim.Adam(torch.nn.Linear(2, 2).parameters())"],
                                 Path(tmp)) for _ in range(repeats)])
    return torch_import, torch_adam


def sweeps(dataset: str, jobs: int, repeats: int, parts: set[str]) -> None:
    # J-job and 2-job sweeps alternate, so that a drift of the machine's speed falls on both alike
    seq, two = [], []
    for _ in range(repeats):
        seq.append(sweep(dataset, jobs))
        two.append(sweep(dataset, 2))
    seq_wall = median([w for w, _ in seq])
    if "sweep" in parts:
        per_job = median([(wall - trained) / jobs for wall, trained in seq])
        # what one more job adds: the process start is paid once, so it cancels out
        marginal = (median([w - t for w, t in seq]) - median([w - t for w, t in two])) / (jobs - 2)
        print(f"{dataset}: in-process sweep of {jobs} x epochs=1: {per_job:.3f} s per job besides training "
              f"(the process start shared out), {marginal:.3f} s for each job more "
              f"(wall {seq_wall:.2f} s)")
    if "launchers" not in parts:
        return
    for launcher in ("parallel", "joblib"):
        par = median([sweep(dataset, jobs, launcher)[0] for _ in range(repeats)])
        print(f"{dataset}: {launcher} (2 workers) / sequential wall, {jobs} x epochs=1: {par / seq_wall:.2f}")
    seq5 = median([sweep(dataset, 4, epochs=5)[0] for _ in range(repeats)])
    for launcher in ("parallel", "joblib"):
        par = median([sweep(dataset, 4, launcher, epochs=5)[0] for _ in range(repeats)])
        print(f"{dataset}: {launcher} (2 workers) / sequential wall, 4 x epochs=5: {par / seq5:.2f}")


def study() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wall = run(["-m", "nnopt_cli", "tune-lr", "dataset=mnist1d", "model=mlp", "epochs=20", "--optimizers",
                    "sgd,momentum,adam,adamw,rmsprop", "--lrs", "8", "--seeds", "3", "--grid-seeds", "3",
                    "--dir", "study"], Path(tmp))
        runs = len(list((Path(tmp) / "study").rglob("summary.json")))
    print(f"study: nnopt tune-lr on MNIST-1D, 5 optimizers x 8 LRs x 3 seeds (+ default LR x 3 seeds): "
          f"{runs} runs in {wall:.0f} s wall")


if __name__ == "__main__":
    main()
