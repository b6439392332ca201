"""How fast `nnopt train` answers without training (`make bench`): `--help`, `--cfg job` and a config
error, each the median wall time of fresh processes, beside two floors measured in the same run:

  python -c pass           the interpreter alone
  python -c "import torch" what any command that imports torch pays

Each command is printed as seconds above the interpreter and as a ratio to `import torch`: below 1,
it answered without waiting for torch. The rounds interleave the commands, so a change in the
machine's load touches them all alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FLOORS = {
    "python -c pass": ["-c", "pass"],
    'python -c "import torch"': ["-c", "import torch"],
}
COMMANDS = {
    "nnopt train --help": (["-m", "nnopt_cli", "train", "--help"], 0),
    "nnopt train --cfg job": (["-m", "nnopt_cli", "train", "--cfg", "job"], 0),
    "nnopt train epochs=0 (config error)": (["-m", "nnopt_cli", "train", "epochs=0"], 2),
}


def timed(args: list[str], cwd: Path, expect: int = 0) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != expect:
        raise SystemExit(f"benchmark command exited {out.returncode}, not {expect}: {' '.join(args)}\n"
                         f"{out.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, load average {load:.2f}")
    jobs = {name: (cmd, 0) for name, cmd in FLOORS.items()} | COMMANDS
    times: dict[str, list[float]] = {name: [] for name in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, (cmd, expect) in jobs.items():
                times[name].append(timed(cmd, Path(tmp), expect))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    bare, torch = med["python -c pass"], med['python -c "import torch"']
    print(f"python -c pass: {bare:.3f} s; import torch: {torch:.3f} s (+{torch - bare:.3f} s)  "
          f"(medians of {args.repeats})")
    for name in COMMANDS:
        t = med[name]
        print(f"{name}: {t:.3f} s = python + {t - bare:.3f} s = {t / torch:.2f} x import torch "
              f"({t - torch:+.3f} s)")


if __name__ == "__main__":
    main()
