"""Command-line overrides of `nnopt train`, checked before Hydra runs: one line naming the key,
the value and what is allowed, instead of Hydra's multi-line report, and no run folder made.

- check_overrides: unparsable overrides, unknown group options, an empty key, a run folder that is a file;
- check_keys: an override of a key the config does not have, and `+key=value` that adds a key nnopt
  would never read (`+post.prune.thresh=0.01`, `+loss=mse`): refused instead of silently ignored;
- check_deletes: `~group.key` of a key the chosen options define (nnopt reads every one), and `~group`
  of a group nnopt needs: refused instead of a KeyError mid-run or a silently different run.

Each message leads somewhere: a close match for a misspelt option or key ("did you mean adam?"),
the key below a group for a value given to the group itself (`batch_size=256` -> batch_size.size),
the group key for a top-level key that lives in a group (`lr=0.01` -> optimizer.lr).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf

from nnopt_cli.config import conf_dir
from nnopt_cli.errors import ConfigError, NnoptError

# a value given to the group itself (`batch_size=256`) meant this key of the group
GROUP_VALUE_KEYS = {"batch_size": "size", "optimizer": "lr", "grad_clip": "max_norm"}


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """"; did you mean X?" for the closest of `choices` (difflib), or ""."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def group_value_hint(group: str, value: object) -> str:
    """`batch_size=256`: a number meant for a key of the group, not an option's name."""
    key = GROUP_VALUE_KEYS.get(group)
    if key is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    return f"; to set {group}.{key} write {group}.{key}={value}"


# a run name or tag: it becomes part of a folder name
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
LABEL_ALLOWED = "letters, digits and _ . + - (at most 64, not starting with a symbol)"


def check_name(value: object) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # name=2024 is a name
    if value is not None and not (isinstance(value, str) and LABEL.fullmatch(value)):
        raise ConfigError("name", value, f"a run name of {LABEL_ALLOWED}, or null")


def check_tags(value: object) -> None:
    if isinstance(value, str):
        raise ConfigError("tags", value, f"a list: tags=[{value}]")
    if not isinstance(value, list) or not all(isinstance(t, str) and LABEL.fullmatch(t) for t in value):
        raise ConfigError("tags", value, f"a list of tags of {LABEL_ALLOWED}: tags=[baseline,adam]")


LABEL_CHECKS = {"name": check_name, "tags": check_tags}


# flags with which Hydra prints something and exits without running the job
INFO_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")


@functools.cache
def group_options() -> dict[str, tuple[list[str], bool]]:
    """Each config group -> (its options, whether `group=null` is allowed: its default is null)."""
    root = conf_dir()
    null_default = set()
    for entry in OmegaConf.load(root / "train.yaml").get("defaults", []):
        if isinstance(entry, (dict, DictConfig)):
            null_default |= {str(k) for k, v in entry.items() if v is None}
    groups = {str(d.relative_to(root)) for d in root.rglob("*") if d.is_dir() and any(d.glob("*.yaml"))}
    named = default_groups()

    def options(group: str) -> list[str]:
        # a subfolder that is not a group of its own holds options too: experiment=claims/l2
        return sorted(f.relative_to(root / group).with_suffix("").as_posix() for f in (root / group).rglob("*.yaml")
                      if not any(str(f.parent.relative_to(root)).startswith(g) for g in named if g != group
                                 and g.startswith(group + "/")))

    return {g: (options(g), g in null_default) for g in groups}


def shown_options(group: str, options: list[str]) -> list[str]:
    """The options as an error lists them: a subfolder's options as one `sub/...` entry."""
    subfolders = sorted({o.split("/", 1)[0] for o in options if "/" in o})
    return [o for o in options if "/" not in o] + [f"{s}/... (conf/{group}/{s}/)" for s in subfolders]


@functools.cache
def default_groups() -> frozenset[str]:
    """The groups conf/train.yaml's defaults list names (optimizer, optimizer/wrapper, post, ...)."""
    entries = OmegaConf.load(conf_dir() / "train.yaml").get("defaults", [])
    return frozenset(str(k) for e in entries if isinstance(e, (dict, DictConfig)) for k in e)


def check_overrides(args: list[str]) -> None:
    """Catch unparsable overrides and unknown group options before Hydra does: one line
    (key, value, what is allowed) instead of Hydra's multi-line report, and no run folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, groups = OverridesParser.create(), None
    for a in args:
        if a.startswith("-") or "=" not in a:  # flags and their values (-m, --cfg job, -cn train)
            continue
        try:
            override = parser.parse_override(a)
        except HydraException as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise NnoptError(f"cannot parse the override {a!r}: {first[:150]}") from None
        key = override.key_or_group
        if not key.strip():
            raise NnoptError(f"the override {a!r} has no key: write key=value")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and not override.is_sweep_override():
            folder = override.value()
            if isinstance(folder, str) and "${" not in folder and os.path.lexists(folder) and not os.path.isdir(folder):
                raise ConfigError(key, folder, "a folder (this path is a file)")
        if key.startswith("hydra") or override.package is not None or override.is_delete():
            continue
        if override.is_add() and key in default_groups():  # Hydra's answer is "Multiple values for ..."
            raise ConfigError(a.split("=", 1)[0], a.split("=", 1)[1],
                              f"{key} is in the defaults list already (conf/train.yaml): "
                              f"write {key}={a.split('=', 1)[1]}, without the +")
        if key in LABEL_CHECKS and not override.is_sweep_override():
            LABEL_CHECKS[key](override.value())
        groups = groups if groups is not None else group_options()
        if key not in groups:
            continue
        options, null_ok = groups[key]
        if override.is_sweep_override():
            if not override.is_choice_sweep():
                continue  # range / interval / glob: Hydra expands and checks them
            values = list(override.sweep_string_iterator())
        else:
            value = override.value()
            values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None and null_ok:
                continue
            if not isinstance(v, str) or v not in options:
                hint = group_value_hint(key, v) or did_you_mean(v, options)
                raise ConfigError(key, v, "one of " + ", ".join(shown_options(key, options))
                                  + (" or null" if null_ok else "") + hint)


@functools.cache
def _top_level_scalars() -> frozenset[str]:
    """The plain (non-group, non-mapping) keys train.yaml itself defines: epochs, seed, device, ..."""
    import yaml

    node = yaml.safe_load((conf_dir() / "train.yaml").read_text())
    return frozenset(k for k, v in node.items() if k not in ("defaults", "hydra") and not isinstance(v, dict))


def _plain_top_level_key(override: str) -> bool:
    key = override.split("=", 1)[0]
    return key in _top_level_scalars()


def _group_choice(override: str) -> bool:
    """`optimizer=adam`: an option of a config group, which check_overrides has checked already."""
    return not override.startswith(("+", "~")) and override.split("=", 1)[0] in group_options()


def check_keys(args: list[str]) -> None:
    """An override of a key the config does not have (`optimizer.lrr=0.1`, `foo=1`): one line
    naming the key and the keys that do exist there, instead of Hydra's multi-line report.

    Composes the config once with the overrides (a sweep's first value for each swept key);
    any other composition problem is left to Hydra to report as it does."""

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException

    parser, plain = OverridesParser.create(), []
    for a in args:
        if a.startswith("-") or ("=" not in a and not a.startswith("~")):  # flags; `~key` has no =
            continue
        o = parser.parse_override(a)  # check_overrides has parsed every one already
        if o.key_or_group.startswith("hydra"):
            continue
        if o.is_sweep_override():
            if not o.is_choice_sweep():
                continue
            a = f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
        plain.append(a)
    if all(_plain_top_level_key(a) or _group_choice(a) for a in plain):
        return  # epochs=3 optimizer=adam ...: no key below a group, nothing to compose (Hydra composes once)

    def compose_with(overrides: list[str]):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            return compose(config_name="train", overrides=overrides)

    try:
        check_deletes(plain, compose_with)
        composed = compose_with(plain)
        check_added_keys(plain, composed, compose_with)
    except ConfigCompositionException as e:
        m = re.match(r"Could not override '([^']+)'", str(e))
        if m is None:
            return
        key = m.group(1)
        given = next((a for a in plain if a.split("=", 1)[0] == key), f"{key}=...")
        parent, _, leaf = key.rpartition(".")
        known, hint = "", ""
        try:
            whole = compose_with([a for a in plain if a != given])
            node = OmegaConf.select(whole, parent) if parent else whole
            if isinstance(node, DictConfig):
                names = sorted(map(str, node.keys()))
                known = ", ".join(names)
                hint = key_hint(whole, parent, leaf, given, [*names, *([] if parent else group_options())])
                if "_target_" in node:  # new keys of a built class are its keyword arguments
                    extra = f"+{given} to pass another argument to {node['_target_']}"
                    hint = f"{hint[:-1]}, or {extra}?" if hint else f"; write {extra}"
        except Exception:
            pass
        where = f"keys of {parent}" if parent else "top-level keys"
        raise ConfigError(key, given.split("=", 1)[1], f"no such key ({where}: {known or '?'}){hint}") from None
    except NnoptError:
        raise
    except Exception:
        return


def key_hint(whole: DictConfig, parent: str, leaf: str, given: str, names: list[str]) -> str:
    """Where an unknown key may have been meant: the same name one level down (`lr` ->
    optimizer.lr, `logger.every` -> logger.tensorboard.every), else a close match among the keys
    and groups there."""
    value = given.split("=", 1)[1]
    node = OmegaConf.select(whole, parent) if parent else whole
    owners = [f"{parent + '.' if parent else ''}{k}" for k, v in node.items() if isinstance(v, DictConfig) and leaf in v]
    if owners:
        return "; did you mean " + " or ".join(f"{o}.{leaf}={value}" for o in sorted(owners)) + "?"
    close = difflib.get_close_matches(leaf, names, n=1, cutoff=0.6)
    return f"; did you mean {parent + '.' if parent else ''}{close[0]}={value}?" if close else ""


_MISSING = object()
# top-level nodes where a user adds keys of their own (observers.<name> of user classes)
USER_NODES = ("observers", "hydra")


def check_added_keys(plain: list[str], composed, compose_with) -> None:
    """`+key=value` / `++key=value` that adds a key nnopt would not read: one line, not a value
    silently ignored (`+post.prune.threshold=0.01`, `+loss=mse`). New keys are fine in a node
    built from `_target_` (they are its keyword arguments: `+optimizer.amsgrad=true`) and under
    `observers`; a `+group=option` adds a config, not a key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, groups = OverridesParser.create(), group_options()
    added = []
    for a in plain:
        o = parser.parse_override(a)
        key = o.key_or_group
        if (o.is_add() or o.is_force_add()) and key not in groups and key.split(".")[0] not in USER_NODES:
            added.append((a, key))
    if not added:
        return
    without = compose_with([a for a in plain if a not in {x[0] for x in added}])
    for a, key in added:
        if OmegaConf.select(without, key, default=_MISSING) is not _MISSING:
            continue  # a key that exists (null included): an ordinary override
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(composed, parent) if parent else composed
        if isinstance(node, DictConfig) and "_target_" in node:
            continue
        before = OmegaConf.select(without, parent) if parent else without
        known = ", ".join(sorted(str(k) for k in before.keys())) if isinstance(before, DictConfig) else ""
        where = f"keys of {parent}" if parent else "top-level keys"
        raise ConfigError(key, a.split("=", 1)[1] if "=" in a else None,
                          f"nnopt reads no such key, so it would be ignored ({where}: {known or '?'})")


class DeletedKeyError(ConfigError):
    """`~key`: one line naming the deleted key and what to write instead."""

    def __init__(self, key: str, allowed: str):
        self.key, self.value, self.allowed = key, None, allowed
        NnoptError.__init__(self, f"invalid config: ~{key}: {allowed}")


def _yaml_value(v: object) -> str:
    """A composed value as it is written on the command line: 3, true, null, [256], adam."""
    if isinstance(v, DictConfig):
        return "{...}"
    v = OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, list):
        return "[" + ",".join(_yaml_value(x) for x in v) + "]"
    return str(v)


def _new_class(key: str, plain: list[str]) -> bool:
    """Whether the command line chooses another class for the node that holds `key`
    (`optimizer._target_=torch.optim.Rprop`, `optimizer.base_optimizer._target_=...`): the node's
    keys are then that class's arguments, and deleting one the class does not take is the fix."""
    parent = key.rpartition(".")[0]
    for a in plain:
        target = a.split("=", 1)[0].lstrip("+")
        if target.endswith("._target_") and (target == f"{parent}._target_" or
                                             (parent and target.startswith(parent + "."))):
            return True
    return False


def check_deletes(plain: list[str], compose_with) -> None:
    """`~key` / `~group`: nnopt reads every key the chosen options (conf/<group>/<option>.yaml) and
    conf/train.yaml define, so deleting one would end in a KeyError mid-run or silently change the
    run (a default in the code instead of the YAML's). Refused in one line naming the key and what
    to write instead. Allowed: `~group` of a group whose default is null (diagnostics, post, ...),
    a key the same command line adds with `+`, the arguments of a class the command line chooses
    with `..._target_=` (`~optimizer.betas` for torch.optim.Rprop), and keys under observers/hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, groups = OverridesParser.create(), group_options()
    deletes = [a for a in plain if a.startswith("~")]
    if not deletes:
        return
    added = {a.split("=", 1)[0].lstrip("+") for a in plain if a.startswith("+")}
    without = None
    for a in deletes:
        key = parser.parse_override(a).key_or_group
        if key.split(".")[0] in USER_NODES or key in added:
            continue
        if key in groups:
            options, null_ok = groups[key]
            if not null_ok:
                raise DeletedKeyError(key, f"nnopt needs the {key} group; choose an option with {key}=NAME "
                                           f"(one of {', '.join(options)})")
            continue
        if without is None:
            without = compose_with([x for x in plain if x not in deletes])
        parent, _, leaf = key.rpartition(".")
        holder = OmegaConf.select(without, parent) if parent else without
        if isinstance(holder, DictConfig) and leaf in list(holder.keys()) and OmegaConf.is_missing(holder, leaf):
            raise DeletedKeyError(key, f"deleted, but nnopt reads this key (??? in the YAML: a value you must "
                                       f"give); set it instead: {key}=...")
        value = OmegaConf.select(without, key, default=_MISSING)
        if value is _MISSING:
            node = OmegaConf.select(without, parent) if parent else without
            names = sorted(map(str, node.keys())) if isinstance(node, DictConfig) else []
            owners = [f"{parent + '.' if parent else ''}{k}" for k, v in node.items()
                      if isinstance(v, DictConfig) and leaf in v] if isinstance(node, DictConfig) else []
            close = difflib.get_close_matches(leaf, names, n=1, cutoff=0.6)
            hint = (f"; did you mean ~{owners[0]}.{leaf}?" if owners else
                    f"; did you mean ~{parent + '.' if parent else ''}{close[0]}?" if close else "")
            where = f"keys of {parent}" if parent else "top-level keys"
            raise DeletedKeyError(key, f"no such key to delete ({where}: {', '.join(names) or 'none'}){hint}")
        if value is None:
            raise DeletedKeyError(key, f"{key} is null (unset) already: leave out ~{key}")
        if _new_class(key, plain):
            continue
        if isinstance(value, DictConfig):
            instead = "set its keys instead (" + ", ".join(f"{key}.{k}" for k in value) + ")"
        else:
            instead = f"set a value instead, e.g. {key}={_yaml_value(value)}"
            if key.endswith("._target_") or leaf == "name":
                instead = f"choose another option of the group instead ({parent}=NAME)"
        raise DeletedKeyError(key, f"deleted, but nnopt reads this key; {instead}")
