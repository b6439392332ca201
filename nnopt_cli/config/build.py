"""Objects named by `_target_` in the config: find the class, bind the settings, build it.

Everything that goes wrong is one ConfigError naming the key (`model._target_`, `observers.x`)
before any data is loaded: a class that cannot be imported, is not of the expected kind, or
whose signature does not take the settings given. optim.py builds optimizers and schedulers the
same way; configs read from a run folder are checked against an allow-list first (targets.py).
"""

from __future__ import annotations

import inspect
from typing import Any

from nnopt_cli.errors import ConfigError

META_PREFIX = "_"  # _target_, _partial_, ...: Hydra's keys, not arguments


def locate(key: str, target: Any, base: type | None = None) -> Any:
    """The class or function a `_target_` names; one line if it cannot be had."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(key, target, "a dotted import path such as my_package.module.Class")
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception as e:  # ImportError, AttributeError, and whatever a module raises on import
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise ConfigError(key, target, f"an importable class ({first[:150]})") from None
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        raise ConfigError(key, target, f"a subclass of {base.__module__}.{base.__qualname__}")
    return obj


def settings(node: dict) -> dict[str, Any]:
    """The node's arguments: every key but Hydra's own (_target_, _partial_, ...)."""
    return {k: v for k, v in node.items() if not str(k).startswith(META_PREFIX)}


def bind(key: str, fn: Any, args: tuple, kwargs: dict[str, Any]) -> None:
    """Check that fn(*args, **kwargs) would bind, naming the settings it does not take."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        names = ", ".join(p.name for p in params[len(args):]) or "none"
        raise ConfigError(key, kwargs, f"settings {getattr(fn, '__qualname__', fn)} accepts ({e}; it takes: {names})") from None


PLAIN_SCALARS = (bool, int, float, str, type(None))


def plain_settings(key: str, fn: Any, kwargs: dict[str, Any]) -> None:
    """Settings passed to a class from a config are its named arguments holding plain data: a
    name it only takes through **kwargs, a nested node (a `_target_` something would build) or a
    string that still reads `${...}` is refused in one line."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for name, value in kwargs.items():
        if params and name not in named:
            raise ConfigError(f"{key}.{name}", value, f"a setting {getattr(fn, '__qualname__', fn)} names "
                                                      f"(it takes: {', '.join(sorted(named)) or 'none'})")
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if not isinstance(v, PLAIN_SCALARS) or (isinstance(v, str) and "${" in v):
                raise ConfigError(f"{key}.{name}", v, "a number, string, boolean, null or a list of them")


def build(key: str, node: dict, base: type | None, *args: Any) -> Any:
    """Locate node['_target_'], bind args + the node's settings, and call it."""
    cls = locate(f"{key}._target_", node.get("_target_"), base)
    kwargs = settings(node)
    bind(key, cls, args, kwargs)
    return cls(*args, **kwargs)
