"""Which `_target_` classes a config read from a run folder may name: an explicit allow-list.

Hydra builds whatever a `_target_` names, at any depth of a node it instantiates. A run folder
is untrusted input (resume=, post.distill.teacher_run=, load_stage_model), so every `_target_`
anywhere in its config is checked here before anything is built:

- it is a dotted name under one of ALLOWED_PREFIXES (torch's optimizers and schedulers, the
  optimizer libraries nnopt depends on, nnopt's own components), and the object found there is
  a class or function defined in that same package: `torch.optim.adam.torch.save` (a
  re-exported module attribute) is refused although it starts with `torch.optim.`;
- an nnopt_cli object must be one nnopt's own conf/ names, or an observer class;
- or it is a name the user gave on this invocation's command line or config (`trusted`), e.g.
  `model._target_=mypkg.Net` repeated on `nnopt train resume=<folder> model._target_=mypkg.Net`.

Configs composed from nnopt's conf/ and the command line are the user's own and not checked.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Iterable
from typing import Any

from hydra.utils import get_object

from nnopt_cli.config import conf_dir
from nnopt_cli.errors import NnoptError

ALLOWED_PREFIXES = ("torch.optim.", "torch.optim.lr_scheduler.", "torch.optim.swa_utils.",
                    "pytorch_optimizer.", "schedulefree.", "nnopt_cli.")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


class UntrustedTargetError(NnoptError):
    """A config from disk names a class nnopt does not build from untrusted configs."""


def targets_in(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every `_target_` at any depth of a plain config."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}{k}"
            if k == "_target_":
                found.append((key, v))
            else:
                found += targets_in(v, key + ".")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += targets_in(v, f"{path}{i}.")
    return found


def trusted_targets(*configs: Any, overrides: Iterable[str] = ()) -> set[str]:
    """The `_target_` values this invocation named itself: in the configs it composed, and in
    `key._target_=value` command-line overrides."""
    out = {v for cfg in configs for _, v in targets_in(cfg) if isinstance(v, str)}
    for o in overrides:
        key, sep, value = str(o).partition("=")
        if sep and key.lstrip("+~").endswith("_target_"):
            out.add(value.strip().strip("'\""))
    return out


@functools.cache
def nnopt_targets() -> frozenset[str]:
    """The nnopt_cli objects nnopt's own conf/ instantiates (warmup_cosine, SweepReport, ...)."""
    names = set()
    for f in conf_dir().rglob("*.yaml"):
        names.update(re.findall(r"_target_:\s*(nnopt_cli\.[\w.]+)", f.read_text()))
    return frozenset(names)


def _is_observer(obj: Any) -> bool:
    # a subclass of Observer exists only once its module is imported: looked up, not imported here,
    # so reading a run folder's config needs no torch
    observers = sys.modules.get("nnopt_cli.training.observers")
    return observers is not None and inspect.isclass(obj) and issubclass(obj, observers.Observer)


def why_refused(target: Any) -> str | None:
    """None when `target` may be built from a config read from disk, else the reason."""
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        return "not a dotted class name"
    prefix = next((p for p in ALLOWED_PREFIXES if target.startswith(p)), None)
    if prefix is None:
        return "not under " + ", ".join(p.rstrip(".") for p in ALLOWED_PREFIXES)
    if any(part.startswith("_") for part in target.split(".")):
        return "a private name"
    if prefix == "nnopt_cli." and target in nnopt_targets():
        return None
    try:
        obj = get_object(target)  # imports modules under the allowed prefix only
    except Exception as e:
        return f"not found ({type(e).__name__})"
    package = prefix.split(".")[0] if prefix != "torch.optim." else "torch.optim"
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return "not a class or function"
    module = getattr(obj, "__module__", "") or ""
    if module != package and not module.startswith(package + "."):
        return f"defined in {module}, outside {package}"
    if prefix == "nnopt_cli." and not _is_observer(obj):
        return "not a component nnopt's conf/ names, nor an observer"
    return None


def check_config_targets(cfg: Any, trusted: Iterable[str] = (), source: str = "a run folder's config") -> None:
    """Refuse (one line) a config read from disk whose `_target_`s, at any depth, are not all
    allowed; call it before anything of that config is built."""
    trusted = set(trusted)
    for key, target in targets_in(cfg):
        if isinstance(target, str) and target in trusted:
            continue
        reason = why_refused(target)
        if reason is not None:
            shown = repr(target) if not isinstance(target, str) else target
            raise UntrustedTargetError(
                f"refused to build {key}={shown[:80]} from {source}: {reason}; a config read from disk may "
                f"only name torch.optim / pytorch_optimizer / schedulefree / nnopt classes. If you trust it, "
                f"name it on the command line: {key}={shown[:80]}")
