"""Compose a run's and a sweep's job configs without re-reading every YAML file for every job.

Before anything runs, Hydra composes the whole config once only to read `hydra.mode` (Hydra.get_mode),
~0.2 s. nnopt's own configs never set it (tested), so unless the command line can (see
`_may_set_mode`) the answer is known without composing: unset, which Hydra turns into RUN or
MULTIRUN from -m exactly as after composing. `mode_known` skips that composition.

Hydra composes each job of a multirun from scratch, twice (the sweeper checks the whole batch, the
launcher composes again): ~0.1 s each here, most of what a short sweep job costs besides training.
Jobs of a grid mostly differ only in values (`seed=0,1,2`, `optimizer.lr=...`), and a value
override never changes what gets composed: Hydra applies such overrides to the composed config
afterwards (`ConfigLoaderImpl._apply_overrides_to_config`; a defaults list can only interpolate
group choices, never values). So `JobConfigs.load_sweep_config` lets Hydra compose the first job of
each structure (the same group choices, hydra.* overrides and keys), keeps that config, and for the
next job of that structure applies the job's value overrides to a copy with Hydra's own function
and sets the hydra.overrides / override_dirname Hydra would set. Anything else (a group choice,
`+key`, `~key`, a dict value, hydra.* keys) is composed by Hydra as before.
`tests/test_sweep_compose.py` checks the result equals Hydra's own composition, hydra node included.

Installed by the `compose_once` callback (conf/train.yaml, hydra.callbacks): before the sweeper is
built it wraps the loader that Hydra hands to the sweeper and the launcher. A joblib worker gets the
wrapper without its cache and builds its own.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra._internal.hydra import Hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict


class JobConfigs:
    """A Hydra config loader that composes each sweep-job structure once (see the module doc)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.templates: dict[tuple, DictConfig] = {}

    def __getattr__(self, name: str) -> Any:  # everything else is the wrapped loader's
        if name in ("loader", "templates"):
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __getstate__(self) -> dict:  # sent to joblib workers: without the cache (each builds its own)
        return {"loader": self.loader}

    def __setstate__(self, state: dict) -> None:
        self.loader, self.templates = state["loader"], {}

    def _is_value(self, o: Override) -> bool:
        """An override Hydra applies after composition as a plain assignment."""
        return (o.type == OverrideType.CHANGE and o.package is None and not o.is_hydra_override()
                and not o.is_sweep_override() and not isinstance(o.value(), dict)
                and not self.loader.repository.group_exists(o.key_or_group))

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        hydra_overrides = list(OmegaConf.to_container(master_config.hydra.overrides.hydra))
        parsed = OverridesParser.create().parse_overrides(hydra_overrides + list(sweep_overrides))
        if any(o.key_or_group.startswith("hydra.searchpath") for o in parsed):  # other groups may exist
            return self.loader.load_sweep_config(master_config, list(sweep_overrides))
        is_value = [self._is_value(o) for o in parsed]
        values = [o for o, v in zip(parsed, is_value, strict=True) if v]
        structure = (tuple(o.input_line for o, v in zip(parsed, is_value, strict=True) if not v),
                     tuple(o.key_or_group for o in values))
        template = self.templates.get(structure)
        if template is None:
            cfg = self.loader.load_sweep_config(master_config, list(sweep_overrides))
            self.templates[structure] = copy.deepcopy(cfg)
            return cfg
        cfg = copy.deepcopy(template)
        self.loader._apply_overrides_to_config(values, cfg)  # what Hydra does after composing
        app = [o for o in parsed if not o.is_hydra_override()]
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in app]
            names = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app, kv_sep=names.kv_sep, item_sep=names.item_sep, exclude_keys=names.exclude_keys)
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)  # as Hydra's load_sweep_config
        return cfg


class ComposeOnce(Callback):
    """Hydra callback: at the start of a multirun, wrap Hydra's config loader in JobConfigs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_app = GlobalHydra.instance().hydra
        if hydra_app is not None and not isinstance(hydra_app.config_loader, JobConfigs):
            hydra_app.config_loader = JobConfigs(hydra_app.config_loader)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_app = GlobalHydra.instance().hydra
        if hydra_app is not None and isinstance(hydra_app.config_loader, JobConfigs):
            hydra_app.config_loader = hydra_app.config_loader.loader


def _may_set_mode(arg: str) -> bool:
    """Could this command-line argument make the composed config set hydra.mode? Only nnopt's own
    config groups are known not to: an added key or group (+), another config dir, name or search
    path may bring a config that does."""
    return arg.startswith(("+", "-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name")) or \
        arg.lstrip("~").startswith(("hydra.mode", "hydra.searchpath"))


@contextlib.contextmanager
def mode_known(args: list[str]) -> Iterator[None]:
    """Within: Hydra.get_mode answers None (hydra.mode unset) without composing, when `args` cannot set it."""
    if any(_may_set_mode(a) for a in args):
        yield
        return
    probe = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.get_mode = probe
