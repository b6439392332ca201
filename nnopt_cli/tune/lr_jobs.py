"""The jobs of `nnopt tune-lr` (tune_lr.py): composed, run and read back in this process.

Each optimizer's config is composed once with Hydra's compose API (as `nnopt train` would with the
same overrides); a job sets optimizer.lr and seed on it, so a config that interpolates them
(scheduler=onecycle's max_lr: ${optimizer.lr}) resolves as in a separate run. A job's folder gets
the .hydra/ files `nnopt train` writes (config.yaml, overrides.yaml, the group choices in
hydra.yaml) before runner.train runs in it. All jobs run inside data.keep_loaded(): the dataset
is prepared once and every job trains on its own copy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from nnopt_cli import data
from nnopt_cli.config import conf_dir
from nnopt_cli.errors import ConfigError, NnoptError, want_traceback
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store import layout
from nnopt_cli.store.folder import read_metrics, read_summary, record_failure, write_json
from nnopt_cli.store.layout import Status
from nnopt_cli.sweep.report import job_action
from nnopt_cli.training import lockstep
from nnopt_cli.training.lockstep import Group
from nnopt_cli.training.vectorized import why_not

log = logging.getLogger("nnopt")
Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


STUDY_FILE = "tune_lr.json"


# ---------------------------------------------------------------------- the grid and the pick (no training)


def sig3(x: float) -> float:
    """An LR rounded to 3 significant digits: what the folder name and the config both say."""
    return float(f"{x:.3g}")


@dataclass(frozen=True)
class LrGrid:
    """n log-spaced LRs from lo to hi (sig3-rounded; one LR: their geometric mean). The same
    formula past either end gives the points --extend adds, at the grid's own spacing."""

    lo: float
    hi: float
    n: int

    @classmethod
    def around(cls, default_lr: float, n: int, span: float, lr_range: tuple[float, float] | None) -> LrGrid:
        lo, hi = lr_range or (default_lr / math.sqrt(span), default_lr * math.sqrt(span))
        return cls(lo, hi, n)

    def lr(self, i: int) -> float:
        """Point i of the grid; i < 0 and i >= n lie beyond its ends."""
        if self.n == 1:
            return sig3(math.sqrt(self.lo * self.hi))
        return sig3(self.lo * (self.hi / self.lo) ** (i / (self.n - 1)))

    def lrs(self) -> list[float]:
        return sorted({self.lr(i) for i in range(self.n)})


def lr_grid(default_lr: float, n: int, span: float, lr_range: tuple[float, float] | None) -> list[float]:
    return LrGrid.around(default_lr, n, span, lr_range).lrs()


def finished(g: dict) -> bool:
    """Every seed of this grid LR finished with a finite metric."""
    return g["metric"]["n"] == len(g["metric"]["values"])


def pick_best(grid: list[dict], mode: str) -> float | None:
    """The grid LR with the best mean final metric (a diverged or failed run counts as the worst);
    on a tie the smaller LR. None when no grid run finished."""
    scored = [(g["metric"]["mean"], g["lr"]) for g in grid if finished(g)]
    if not scored:
        return None
    best = max(scored, key=lambda s: (s[0] if mode == "max" else -s[0], -s[1]))
    return best[1]


def edge_of(grid: list[dict], best: float | None) -> str | None:
    """Where the best LR sits among those tried: "low" / "high" when it is the smallest / largest
    (the optimum may lie beyond it), "flat" when every LR that finished scored the same (the grid
    cannot tell them apart: widening it on one side would be a guess), else None. A grid of one LR
    has no inside: None."""
    lrs = [g["lr"] for g in grid]
    if best is None or len(set(lrs)) < 2:
        return None
    scores = [g["metric"]["mean"] for g in grid if finished(g)]
    if len(scores) > 1 and len(set(scores)) == 1:
        return "flat"
    return "low" if best == min(lrs) else "high" if best == max(lrs) else None


@dataclass
class GridSearch:
    entries: list[dict]       # one per LR tried, by LR; {"lr", "metric", ...} as evaluate returned it
    best: float | None
    edge: str | None          # edge_of the best among every LR tried
    added: list[float]        # LRs beyond the first grid, in the order they were tried


def search_grid(grid: LrGrid, evaluate: Callable[[float], dict], mode: str, extend_max: int = 0) -> GridSearch:
    """Evaluate every grid LR and pick the best; while the best is the smallest or the largest LR
    tried (and not merely tied with all the others), try one more point beyond that edge at the
    grid's spacing, up to extend_max points."""
    entries = {lr: evaluate(lr) for lr in grid.lrs()}
    low_i, high_i, added = 0, grid.n - 1, []
    while True:
        best = pick_best(list(entries.values()), mode)
        edge = edge_of(list(entries.values()), best)
        if edge not in ("low", "high") or len(added) >= extend_max:
            break
        if edge == "low":
            low_i -= 1
            lr = grid.lr(low_i)
        else:
            high_i += 1
            lr = grid.lr(high_i)
        if lr in entries:  # a spacing below sig3's resolution: no new point to try
            break
        entries[lr] = evaluate(lr)
        added.append(lr)
    return GridSearch([entries[lr] for lr in sorted(entries)], best, edge, added)


def study_dir(a: argparse.Namespace) -> Path:
    """The default study folder: a hash of what the runs depend on. --extend is left out, so that
    `nnopt tune-lr ... --extend` after the same command without it reuses every run."""
    if a.dir is not None:
        return a.dir
    spec = [a.overrides, a.optimizers, a.lrs, a.span, a.lr_range, a.seeds, a.grid_seeds, a.metric]
    return Path("outputs") / "tune_lr" / hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:10]


def final_metric(run_dir: Path, summary: dict | None, metric: str) -> float | None:
    """The last epoch's validation metric of a finished run; None for one that diverged or failed."""

    if not summary or summary.get("status") != Status.COMPLETED:
        return None
    rows = [r for r in read_metrics(run_dir / layout.METRICS) if "stage" not in r]
    value = rows[-1].get(metric) if rows else None
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def stats(values: list) -> dict:
    ok = [v for v in values if isinstance(v, (int, float))]
    return {"mean": statistics.fmean(ok) if ok else None, "std": statistics.stdev(ok) if len(ok) > 1 else 0.0,
            "n": len(ok), "values": values}


def lr_name(lr: float) -> str:
    """The LR as a folder name: short (%g) where that names this very value, else every digit, so two
    LRs of a grid never share a folder."""
    short = f"{lr:g}"
    return short if float(short) == lr else repr(float(lr))


class StudyInterrupted(KeyboardInterrupt):
    """A job was stopped by Ctrl-C / SIGTERM; its checkpoint is kept for the rerun."""


@dataclass
class Plan:
    """One optimizer's part of the study: its composed config, default LR and LR grid."""

    optimizer: str
    base: DictConfig
    choices: dict[str, str]
    default_lr: float
    grid: LrGrid
    done: dict[tuple[float, int], dict] = field(default_factory=dict)  # (lr, seed) -> job record


class Study:
    def __init__(self, root: Path, overrides: list[str], optimizers: list[str], metric: str,
                 vectorize: bool = False):
        self.root, self.optimizers, self.metric = Path(root), optimizers, metric
        self.vectorize = vectorize  # train each optimizer's LR grid x seeds as one model (training/vectorized.py)
        # a run of seconds is cheaper to redo than to checkpoint every epoch (3 fsyncs, ~25 ms on a
        # plain disk): jobs checkpoint on Ctrl-C / SIGTERM only, unless the command says otherwise
        given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        self.overrides = list(overrides) + ([] if given & {"checkpoint", "checkpoint.every"} else ["checkpoint.every=0"])
        self.trained, self.skipped, self.failed, self.train_s = 0, 0, 0, 0.0

    # ------------------------------------------------------------------ building the configs

    def plan(self, grid_fn: Callable[[float], LrGrid]) -> list[Plan]:
        """Compose and check every optimizer's config before any run starts (a bad one: one line)."""
        from hydra import compose, initialize_config_dir

        options = {p.stem for p in (conf_dir() / "optimizer").glob("*.yaml")}
        plans = []
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            for opt in self.optimizers:
                if opt not in options:
                    raise ConfigError("--optimizers", opt, "optimizer presets: one of " + ", ".join(sorted(options)))
                cfg = compose(config_name="train", overrides=[*self.overrides, f"optimizer={opt}"],
                              return_hydra_config=True)
                choices = {str(k): v for k, v in cfg.hydra.runtime.choices.items()
                           if not str(k).startswith("hydra/") and v is not None}
                with open_dict(cfg):
                    del cfg["hydra"]
                default_lr = float(cfg.optimizer.lr)
                plan = Plan(opt, cfg, choices, default_lr, grid_fn(default_lr))
                if cfg.dataset.name == "regression":  # its table and picks are by accuracy
                    raise ConfigError("dataset", "regression", "a classification dataset for nnopt tune-lr "
                                      "(tune a regression's LR with nnopt tune tune.objective=best/val/loss "
                                      "tune.direction=minimize)")
                validate(self.config(plan, plan.grid.lr(0), 0))
                plans.append(plan)
        return plans

    def config(self, plan: Plan, lr: float, seed: int) -> dict:
        """The resolved config of one job (the base is shared: every job sets both values)."""
        plan.base.optimizer.lr = lr
        plan.base.seed = seed
        return OmegaConf.to_container(plan.base, resolve=True)

    def overrides_of(self, plan: Plan, lr: float, seed: int) -> list[str]:
        return [*self.overrides, f"optimizer={plan.optimizer}", f"optimizer.lr={lr!r}", f"seed={seed}"]

    def run_dir(self, plan: Plan, lr: float, seed: int) -> Path:
        """Keyed by the job's identity: optimizer, LR, seed (the study's other overrides are its own)."""
        return self.root / plan.optimizer / f"lr={lr_name(lr)}" / f"seed={seed}"

    # ------------------------------------------------------------------ running

    def job(self, plan: Plan, lr: float, seed: int) -> dict:
        """Run (or skip, or resume) one job; its record for the study summary."""
        if (lr, seed) in plan.done:
            return plan.done[(lr, seed)]

        cfg = self.config(plan, lr, seed)
        run_dir = self.run_dir(plan, lr, seed)
        action = job_action(run_dir, cfg)  # a folder of another experiment: SweepFolderError, one line
        label = f"{plan.optimizer} lr={lr:g} seed={seed}"
        if action == "skip":
            self.skipped += 1
        else:
            self.write_hydra(run_dir, plan, lr, seed)
            try:
                train(cfg, RunContext(run_dir=run_dir, live_progress=False, resume=action == "resume"))
            except KeyboardInterrupt:
                raise StudyInterrupted() from None
            except Exception as e:  # the study goes on; the job's summary.json says failed, and why
                record_failure(run_dir, e)
                if want_traceback() or isinstance(e, NnoptError):
                    raise  # a data or checkpoint error would fail every job alike: stop with its one line
        summary = read_summary(run_dir) or {"status": Status.FAILED}
        status = summary.get("status")
        if status == Status.INTERRUPTED:
            raise StudyInterrupted()
        if action != "skip":
            self.trained += 1
            self.train_s += summary.get("train_time_s") or 0.0
            self.failed += status not in (Status.COMPLETED, Status.DIVERGED)
        record = {"lr": lr, "seed": seed, "dir": str(run_dir.relative_to(self.root)), "status": status,
                  self.metric: final_metric(run_dir, summary, self.metric),
                  "test/acc": summary.get("test/acc"), "test/loss": summary.get("test/loss")}
        value = record[self.metric]
        shown = f"{self.metric}={value:.4f}" if value is not None else ""
        note = "done before, skipped" if action == "skip" else f"{summary.get('train_time_s') or 0:.1f} s"
        print(f"  {label:<34} {status:<10} {shown:<16} ({note})", flush=True)
        plan.done[(lr, seed)] = record
        return record

    def write_hydra(self, run_dir: Path, plan: Plan, lr: float, seed: int) -> None:
        """The .hydra/ files `nnopt train` writes: nnopt compare and resume read them."""
        hydra_dir = run_dir / layout.HYDRA_DIR
        hydra_dir.mkdir(parents=True, exist_ok=True)
        # unresolved, as Hydra saves it; libyaml's dumper: OmegaConf.to_yaml costs ~10 ms a job
        files = {Path(layout.CONFIG).name: OmegaConf.to_container(plan.base, resolve=False),
                 Path(layout.OVERRIDES).name: self.overrides_of(plan, lr, seed),
                 Path(layout.HYDRA_CONFIG).name: {"hydra": {"runtime": {"choices": plan.choices}}}}
        for name, content in files.items():
            # whole or absent, like Hydra's own .hydra/ (no fsync: ~8 ms each here, and the run's
            # summary.json, not these, is what a rerun trusts)
            tmp = hydra_dir / f".{name}.tmp"
            tmp.write_text(yaml.dump(content, Dumper=Dumper, default_flow_style=False, sort_keys=False))
            os.replace(tmp, hydra_dir / name)

    def train_together(self, plan: Plan, lrs: list[float], seeds: range) -> None:
        """--vectorize: the jobs (LR x seed) not done yet train as one vectorized model, each still a run
        of its own (training/lockstep.py); the protocol then finds them done. A config that cannot
        train that way: one line, and the jobs run one by one as the protocol asks for them."""
        todo = [(lr, s) for lr in dict.fromkeys(lrs) for s in seeds if (lr, s) not in plan.done]
        if not self.vectorize or len(todo) < 2:
            return
        why = why_not(self.config(plan, *todo[0]))
        if why is not None:
            print(f"  {plan.optimizer}: runs one by one, not vectorized: {why}", flush=True)
            return
        group = Group([lambda lr=lr, s=s: self.job(plan, lr, s) for lr, s in todo],
                      cpu_max_flops=lockstep.CPU_MAX_FLOPS)
        members = group.run()
        how = ("one by one: on the CPU this model is arithmetic-bound, stacking is no faster" if group.told
               else "together as one vectorized model")
        print(f"  {plan.optimizer}: {len(todo)} runs trained {how}", flush=True)
        for m in members:
            if m.error is not None:
                raise m.error

    def group(self, plan: Plan, lr: float, seeds: range) -> dict:

        records = [self.job(plan, lr, s) for s in seeds]
        return {"lr": lr, "runs": [r["dir"] for r in records], "status": [r["status"] for r in records],
                **{k: stats([r[k] for r in records]) for k in (self.metric, "test/acc", "test/loss")}}

    def grid_point(self, plan: Plan, lr: float, protocol: dict[str, Any]) -> dict:
        """One LR of the grid over the grid seeds, scored by its mean final metric."""
        if lr not in plan.grid.lrs():
            print(f"  {plan.optimizer}: the best LR so far is on the grid's edge: adding lr={lr:g}", flush=True)
        g = self.group(plan, lr, range(protocol["grid_seeds"]))
        return {**g, "metric": g[self.metric]}

    def run(self, plans: list[Plan], protocol: dict[str, Any]) -> dict:
        """The protocol, optimizer by optimizer; writes and returns the study summary."""

        t0 = time.perf_counter()
        out: dict[str, Any] = {}
        with data.keep_loaded():
            for plan in plans:
                print(f"{plan.optimizer}: grid {', '.join(f'{lr:g}' for lr in plan.grid.lrs())} "
                      f"(default {plan.default_lr:g})", flush=True)
                self.train_together(plan, plan.grid.lrs(), range(protocol["grid_seeds"]))
                search = search_grid(plan.grid, lambda lr, plan=plan: self.grid_point(plan, lr, protocol),
                                     protocol["mode"], protocol["extend_max"])
                best = search.best
                self.train_together(plan, [lr for lr in (best, plan.default_lr) if lr is not None],
                                    range(protocol["seeds"]))
                tuned = self.group(plan, best, range(protocol["seeds"])) if best is not None else None
                default = self.group(plan, plan.default_lr, range(protocol["seeds"]))
                out[plan.optimizer] = {
                    "default_lr": plan.default_lr, "best_lr": best,
                    "edge": search.edge,  # "low" / "high": the best is the smallest / largest LR tried
                    "added_lrs": search.added,
                    "grid": [{"lr": g["lr"], "added": g["lr"] in search.added, "runs": g["runs"],
                              "status": g["status"], self.metric: g[self.metric]} for g in search.entries],
                    "tuned": tuned, "default": default,
                    "runs_tuning": len(search.entries) * protocol["grid_seeds"],  # what picking the LR cost
                    "runs_all": len(plan.done),  # distinct runs of this optimizer, tuning included
                }
        wall = time.perf_counter() - t0
        result = {"protocol": protocol, "optimizers": out, "wall_s": wall, "jobs": {
            "run": self.trained, "skipped": self.skipped, "failed": self.failed, "train_s": self.train_s,
            # what a trained job cost beyond its training epochs (compose, data copy, build, test, writes)
            "overhead_per_job_s": (wall - self.train_s) / self.trained if self.trained else 0.0}}
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / STUDY_FILE, result)
        return result
