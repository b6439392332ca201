"""The value checks every config group uses: each failure is one ConfigError naming the key,
the value given and what is allowed (so a typo costs one line and no training time).

The range a YAML comment states ("# > 0") and the need_* call that checks it say the same thing.
"""

from __future__ import annotations

import math
from typing import Any

from nnopt_cli.errors import ConfigError


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def need_int(key: str, v: Any, lo: int | None = None, hi: int | None = None) -> None:
    ok = is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)
    if not ok:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(key, v, f"an integer {rng}" if lo is not None else "an integer")


def need_num(key: str, v: Any, *, gt: float | None = None, ge: float | None = None,
             lt: float | None = None, le: float | None = None, finite: bool = True) -> None:
    """A number in the given bounds; NaN never, inf only with finite=False (an inf-norm)."""
    ok = is_num(v) and v == v  # v == v rejects NaN
    try:
        ok = ok and (not finite or math.isfinite(v))
    except OverflowError:  # an int beyond float range
        ok = False
    ok = ok and (gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt) and (le is None or v <= le)
    if not ok:
        bounds = [f"> {gt}" if gt is not None else "", f">= {ge}" if ge is not None else "",
                  f"< {lt}" if lt is not None else "", f"<= {le}" if le is not None else ""]
        infinite = is_num(v) and isinstance(v, float) and v in (math.inf, -math.inf)
        what = "a finite number " if finite and infinite else "a number "
        raise ConfigError(key, v, what + " and ".join(b for b in bounds if b))


def need_choice(key: str, v: Any, choices: tuple | list) -> None:
    if v not in choices:
        raise ConfigError(key, v, "one of " + ", ".join(map(str, choices)))


def need_bool(key: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ConfigError(key, v, "true or false")


def need_int_list(key: str, v: Any, lo: int = 1, allow_empty: bool = True) -> None:
    if not isinstance(v, list) or (not allow_empty and not v) or not all(is_int(x) and x >= lo for x in v):
        raise ConfigError(key, v, f"a list of integers >= {lo}" + ("" if allow_empty else " (at least one)"))


def need_keys(group: str, node: Any, keys: tuple[str, ...]) -> None:
    """A key the code reads but the YAML lacks: one line instead of a KeyError later."""
    if not isinstance(node, dict):
        raise ConfigError(group, node, "a mapping of settings")
    missing = [k for k in keys if k not in node]
    if missing:
        raise ConfigError(f"{group}.{missing[0]}", None, f"a value (the {group} config lacks it; keys given: "
                                                         f"{', '.join(map(str, node)) or 'none'})")
