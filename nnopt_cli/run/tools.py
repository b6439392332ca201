"""What `nnopt lr-find` and `nnopt landscape` share: a config composed like `nnopt train` composes
it, nnopt's own builders for data and model, a run folder's config read as untrusted data, and an
output folder that is never a run folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nnopt_cli.config import conf_dir
from nnopt_cli.config.overrides import check_keys, check_overrides
from nnopt_cli.data import DATASETS, load_splits
from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.models import MODELS
from nnopt_cli.models import make_model as build
from nnopt_cli.models.activation import ACTIVATIONS
from nnopt_cli.run.validate import validate
from nnopt_cli.store import layout
from nnopt_cli.store.untrusted import (
    DATA_LOCATION_KEYS,
    UntrustedFileError,
    load_config,
)

# files whose presence makes a folder a run folder (written by nnopt train)
RUN_MARKERS = (layout.SUMMARY, layout.METRICS, layout.CHECKPOINT, layout.HYDRA_DIR)


def compose_config(overrides: list[str]) -> dict[str, Any]:
    """The resolved, checked config `nnopt train <overrides>` would run (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    check_overrides(overrides)
    check_keys(overrides)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)
    validate(cfg)
    return cfg


def load_data(dataset: dict[str, Any]):

    try:
        return load_splits(dataset)
    except TypeError as e:  # a setting load_dataset does not take
        raise ConfigError("dataset", dataset, str(e).splitlines()[0]) from None


def make_model(cfg: dict[str, Any], input_shape, num_classes: int):

    return build(cfg, input_shape, num_classes)


def output_dir(kind: str, out: Path | None) -> Path:
    """`out`, or outputs/<kind>/<time>; refuses a folder inside a run folder."""
    path = Path(out) if out is not None else Path("outputs") / kind / time.strftime("%Y-%m-%d_%H-%M-%S")
    for p in (path.resolve(), *path.resolve().parents):
        if any((p / m).exists() for m in RUN_MARKERS):
            raise NnoptError(f"--out {str(path)!r} is inside run folder {p}; {kind} never writes into run "
                             "folders, choose another path")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _plain(key: str, v: Any) -> None:
    """A run folder's config value must be plain data: no interpolation for us to resolve."""
    if isinstance(v, dict):
        for k, x in v.items():
            _plain(f"{key}.{k}", x)
    elif isinstance(v, list):
        for x in v:
            _plain(key, x)
    elif isinstance(v, str) and "${" in v:
        raise ConfigError(key, v, "a plain value (interpolations in a run folder's config are not resolved)")


def run_config(run_dir: Path) -> dict[str, Any]:
    """The parts of <run>/.hydra/config.yaml needed to rebuild its model and data, read as untrusted
    data through the one guarded reader (untrusted.load_config: size cap, regular file inside the
    folder, alias and interpolation budgets, no resolvers), no `_target_` (only nnopt's own models
    by name), and no data location of the folder's choosing."""

    path = Path(run_dir) / layout.CONFIG
    try:
        cfg = load_config(path, folder=Path(run_dir))
    except FileNotFoundError:
        raise NnoptError(f"{run_dir} is not a run folder of nnopt train (no .hydra/config.yaml)") from None
    except UntrustedFileError as e:
        raise NnoptError(str(e)) from None
    except (OSError, ValueError) as e:
        raise NnoptError(f"{path} is not a readable config ({str(e).splitlines()[0][:120]})") from None
    out: dict[str, Any] = {}
    for group, names in (("model", MODELS), ("activation", ACTIVATIONS), ("dataset", DATASETS), ("init", None)):
        node = cfg.get(group)
        if not isinstance(node, dict):
            raise ConfigError(group, node, f"a {group} node in {path}")
        if "_target_" in node:
            raise ConfigError(f"{group}._target_", node["_target_"], f"one of nnopt's own {group}s by name: a run "
                              "folder's config may not name code to run")
        if names is not None and node.get("name") not in names:
            raise ConfigError(f"{group}.name", node.get("name"), "one of " + ", ".join(names))
        _plain(group, node)
        out[group] = dict(node)
    out["dataset"] = {k: v for k, v in out["dataset"].items() if k not in DATA_LOCATION_KEYS}
    out["init"] = {"name": "default"}  # weights come from the folder: no initializer needed
    ebs = cfg.get("eval_batch_size", 2048)
    out["eval_batch_size"] = ebs if isinstance(ebs, int) and not isinstance(ebs, bool) and ebs >= 1 else 2048
    return out
