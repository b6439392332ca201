"""Time `nnopt compare` over 1,000 small run folders (prints seconds; not a test).

    python -m benchmarks.compare_1000 [--runs 1000] [--epochs 10]

The folders are written the way `nnopt train` writes them: `.hydra/config.yaml` and
`.hydra/hydra.yaml` from the real composed config (5 optimizers x N/5 seeds), `overrides.yaml`,
`metrics.jsonl` with one row per epoch and `summary.json`, in a temporary directory that is
removed afterwards. Three timings: reading every run, the table grouped by optimizer, and the
whole `nnopt compare` command in a fresh process (Python start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nnopt_cli.config import conf_dir

OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam")


def templates() -> dict[str, tuple[str, str]]:
    """(config.yaml, hydra.yaml) text per optimizer, as Hydra writes them for a run."""
    out = {}
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        for opt in OPTIMIZERS:
            cfg = compose(config_name="train", overrides=[f"optimizer={opt}", "seed=SEED"],
                          return_hydra_config=True)
            hydra_cfg = OmegaConf.create({"hydra": cfg.hydra})
            hydra_cfg.hydra.runtime.choices = {**cfg.hydra.runtime.choices, "optimizer": opt}
            OmegaConf.set_struct(cfg, False)
            del cfg["hydra"]
            out[opt] = (OmegaConf.to_yaml(cfg), OmegaConf.to_yaml(hydra_cfg))
    return out


def write_runs(root: Path, n: int, epochs: int) -> None:
    rng = random.Random(0)
    tpl = templates()
    for i in range(n):
        opt, seed = OPTIMIZERS[i % len(OPTIMIZERS)], i // len(OPTIMIZERS)
        d = root / f"{i}"
        (d / ".hydra").mkdir(parents=True)
        config, hydra_yaml = tpl[opt]
        (d / ".hydra" / "config.yaml").write_text(config.replace("seed: SEED", f"seed: {seed}"))
        (d / ".hydra" / "hydra.yaml").write_text(hydra_yaml)
        (d / ".hydra" / "overrides.yaml").write_text(f"- optimizer={opt}\n- seed={seed}\n")
        rows, acc = [], 0.8
        for e in range(1, epochs + 1):
            acc = min(0.99, acc + rng.uniform(0, 0.03))
            rows.append({"epoch": e, "train/loss": 1 - acc, "train/acc": acc, "lr": 0.01, "batch_size": 128,
                         "steps": 430, "grad_norm": rng.uniform(0.5, 2), "val/loss": 1.1 - acc,
                         "val/acc": acc - 0.01, "time_s": rng.uniform(1, 2)})
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {"status": "completed", "device": "cpu", "versions": {"nnopt": "0.1.0"}, "params": 203530,
                   "test/loss": 1.1 - acc, "test/acc": acc, "best/val/acc": acc - 0.01, "best/val/epoch": epochs,
                   "epochs": epochs, "train_time_s": 1.5 * epochs}
        (d / "summary.json").write_text(json.dumps(summary, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()

    from nnopt_cli.compare.discover import discover
    from nnopt_cli.compare.table import build_table, default_metrics

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        t0 = time.perf_counter()
        write_runs(root, args.runs, args.epochs)
        print(f"wrote {args.runs} run folders ({args.epochs} epochs each) in {time.perf_counter() - t0:.1f}s")

        t0 = time.perf_counter()
        runs = discover([root])
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = build_table(runs, default_metrics(runs), ["optimizer"], "test/acc")
        t_table = time.perf_counter() - t0
        assert len(runs) == args.runs and len(table.rows) == len(OPTIMIZERS)
        print(f"read {len(runs)} runs: {t_read:.2f}s | grouped table: {t_table:.2f}s")

        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "nnopt_cli", "compare", str(root), "--group-by", "optimizer",
                              "--sort", "test/acc", "--format", "csv"], capture_output=True, text=True, env=env)
        t_cli = time.perf_counter() - t0
        assert out.returncode == 0, out.stderr
        print(f"nnopt compare {args.runs} runs --group-by optimizer (fresh process, start-up included): {t_cli:.2f}s")


if __name__ == "__main__":
    main()
