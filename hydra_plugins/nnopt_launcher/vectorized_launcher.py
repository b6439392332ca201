"""`hydra/launcher=vectorized`: the jobs of a sweep that differ only in seed (and optimizer.lr) train
together as one vectorized model (nnopt_cli/training/vectorized.py), in the sweep's own process.

Every job still runs nnopt's whole job (the `nnopt train` app: its folder, skip_completed, .hydra/,
summary, checkpoints, errors), each in a thread of its own; the threads take turns, and only the
epochs' training is shared (nnopt_cli/training/lockstep.py). Jobs that cannot train that way run one
by one as with the basic launcher, each with one line saying why (nnopt_cli/sweep/vectorized.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from nnopt_cli.config.checks import need_int

log = logging.getLogger(__name__)


def _resolved(cfg: DictConfig) -> dict | None:
    """The job's config as the run sees it (None when it does not resolve: the job reports that itself)."""
    HydraConfig.instance().set_config(cfg)
    try:
        return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    except Exception:
        return None


def _numbers(jobs: list[int]) -> str:
    return ", ".join(f"#{j}" for j in jobs)


class VectorizedLauncher(Launcher):
    # (Hydra imports every launcher module at start-up: the torch side is imported when a sweep launches,
    # and the defaults are conf/hydra/launcher/vectorized.yaml's)
    def __init__(self, max_members: int, cpu_max_flops: int | None) -> None:
        need_int("hydra.launcher.max_members", max_members, 1)
        if cpu_max_flops is not None:
            need_int("hydra.launcher.cpu_max_flops", cpu_max_flops, 0)
        self.max_members, self.cpu_max_flops = max_members, cpu_max_flops
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _job_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        return cfg

    def _run(self, cfg: DictConfig) -> JobReturn:
        HydraConfig.instance().set_config(cfg)
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=cfg,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = [self._job_config(initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
        from nnopt_cli.sweep.vectorized import plan

        plans = plan([_resolved(c) for c in configs], self.max_members)
        log.info(f"Launching {len(job_overrides)} jobs, vectorized where they differ only in seed / optimizer.lr")
        for i, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
        returns: dict[int, JobReturn] = {}
        for p in plans:
            numbers = [initial_job_idx + j for j in p.jobs]
            if p.alone_because is not None:
                log.info(f"vectorized: job {_numbers(numbers)} runs on its own: {p.alone_because}")
                for j in p.jobs:
                    returns[j] = self._run(configs[j])
                    configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
                continue
            log.info(f"vectorized: jobs {_numbers(numbers)} form one vectorized group ({len(p.jobs)} members)")
            returns.update(zip(p.jobs, self._run_group([configs[j] for j in p.jobs]), strict=True))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[i] for i in range(len(job_overrides))]

    def _run_group(self, configs: list[DictConfig]) -> list[JobReturn]:
        """The jobs' runs as one group; each job's logging (its log file) is put back at its turn. An
        interrupt (or any error that ends a job's process) is raised once every member has stopped."""
        from nnopt_cli.training.lockstep import Group

        root = logging.getLogger()
        handlers: dict[int, list] = {}

        hydra_configs: dict[int, DictConfig] = {}

        def on_turn(i: int) -> None:
            # set_config copies the job's hydra node: do it once per member, then hand its copy back
            if i in hydra_configs:
                HydraConfig.instance().cfg = hydra_configs[i]
            else:
                HydraConfig.instance().set_config(configs[i])
                hydra_configs[i] = HydraConfig.instance().cfg
            if i in handlers:
                root.handlers[:] = handlers[i]

        def after_turn(i: int) -> None:
            handlers[i] = list(root.handlers)

        members = Group([lambda c=c: self._run(c) for c in configs], on_turn, after_turn,
                        cpu_max_flops=self.cpu_max_flops).run()
        for m in members:
            if m.error is not None:
                raise m.error
        return [m.outcome for m in members]
