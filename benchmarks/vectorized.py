"""Seeds trained as one vectorized model (`make bench`): hydra/launcher=vectorized against the
sequential in-process sweep (the basic launcher) of the very same jobs, in the same run.

  mnist1d-mlp   16 seeds, MLP on MNIST-1D          target >= 3x
  mnist-mlp      8 seeds, MLP on MNIST             target >= 1.3x
  mnist1d-cnn   16 seeds, the MNIST-1D paper's CNN  never slower

Each side is one `nnopt train -m ...` command in a fresh process (imports, composing, every folder,
checkpoint and summary included): the ratio is sequential wall / vectorized wall, the median of
--repeats, both sides with the same `threads` (1 by default: fair on a loaded machine, and what a
sweep of many small jobs would use; --threads 2 is what an idle 2-core machine's default gives).

Beside it, the training alone: the sequential jobs' train_time_s (their epochs: training and
validation) added up, against one vectorized member's (the group's stacked epochs and its own
validation). The whole command also pays what the stacking cannot share: start-up, and each job's
folder, checkpoints, metrics and test.
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

CASES = {  # name: (overrides, seeds, target ratio)
    "mnist1d-mlp": (["dataset=mnist1d", "model=mlp", "epochs=10"], 16, 3.0),
    "mnist-mlp": (["dataset=mnist", "model=mlp", "epochs=1"], 8, 1.3),
    "mnist1d-cnn": (["dataset=mnist1d", "model=cnn1d", "epochs=5"], 16, 1.0),
}


def sweep_wall(overrides: list[str], seeds: int, threads: int, vectorized: bool) -> tuple[float, float]:
    """Wall seconds of the whole `nnopt train -m` command, and its training seconds (the jobs'
    train_time_s added up; for a vectorized group, one member's: the group trained them at once)."""
    extra = ["hydra/launcher=vectorized"] if vectorized else []
    args = [sys.executable, "-m", "nnopt_cli", "train", "-m", *overrides, f"threads={threads}",
            f"seed={','.join(map(str, range(seeds)))}", "hydra.sweep.dir=sweep", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = subprocess.run(args, cwd=tmp, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                             text=True)
        wall = time.perf_counter() - t0
        summaries = [json.loads(p.read_text()) for p in Path(tmp, "sweep").rglob("summary.json")]
    if out.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(args)}\n{out.stderr[-2000:]}")
    if vectorized and "form one vectorized group" not in out.stdout:
        raise SystemExit(f"the jobs did not train together: {' '.join(args)}\n{out.stdout[-2000:]}")
    trained = [summary["train_time_s"] for summary in summaries]
    stacked = all("vectorized" in summary for summary in summaries)  # not the one-by-one fallback
    return wall, statistics.mean(trained) if stacked else sum(trained)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--extra", default="", metavar="OVERRIDES",
                        help="overrides added to both sides, space separated (e.g. checkpoint.every=0: "
                             "what the per-run writes cost)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}, threads={args.threads} on both sides")
    for name in args.cases.split(","):
        overrides, seeds, target = CASES[name]
        overrides = [*overrides, *args.extra.split()]
        seq, vec = [], []
        for _ in range(args.repeats):  # alternated, so a change in the machine's load hits both sides
            seq.append(sweep_wall(overrides, seeds, args.threads, vectorized=False))
            vec.append(sweep_wall(overrides, seeds, args.threads, vectorized=True))
        s, v = statistics.median(w for w, _ in seq), statistics.median(w for w, _ in vec)
        st, vt = statistics.median(t for _, t in seq), statistics.median(t for _, t in vec)
        verdict = "ok" if s / v >= target else "BELOW TARGET"
        print(f"{name:<12} {args.extra} {seeds:>2} seeds  sequential {s:6.1f} s  vectorized {v:6.1f} s  "
              f"{s / v:4.2f}x  (target >= {target:g}x: {verdict});  training alone {st:5.1f} s vs {vt:5.1f} s  "
              f"{st / vt:4.2f}x", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
