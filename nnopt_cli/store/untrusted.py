"""Reading files of a run folder as untrusted input: size caps, regular files only, safe YAML.

A run folder may have been copied from anywhere (a colleague, a bug report, a download), so
every file nnopt reads from one goes through here:

- `read_bytes`: opens without blocking (a FIFO would hang `open`), refuses anything but a
  regular file (a link to /dev/zero would never end) and reads at most a cap;
- `load_yaml`: PyYAML's safe loader, refusing a document whose aliases expand to more nodes
  than a config can have (a 342-byte "billion laughs" would take gigabytes), or whose `${key}`
  references would expand to more than a config can hold (eight levels of ten `${z}` each);
- `load_config`: a mapping whose `${key}` references are resolved among its own keys, once, and
  whose resolver calls (`${oc.env:SECRET}`, `${oc.decode:...}`) are refused: values from disk are
  never looked up in the environment, and a value that still reads `${...}` after that one
  resolution (an escaped `\\${oc.create:...}`) is refused, so nothing can resolve it a second time.
  `_target_`s named by nnopt's earlier module paths are renamed to today's (RENAMED_TARGETS), so
  old folders resume; targets.py then checks them;
- `check_run_files`: the files a resumed run reads and appends to are regular files of bounded
  size inside the folder (no FIFO, no link to /dev/zero or out of the folder);
- `read_summary` / `summary_or_reason`: summary.json, the one reader of it.

Torch-free on purpose: `nnopt compare` imports it and must start fast.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from nnopt_cli.errors import NnoptError
from nnopt_cli.store.layout import SUMMARY

MiB = 1 << 20
CONFIG_MAX_BYTES = 4 * MiB      # a composed config is a few kB
SUMMARY_MAX_BYTES = 64 * MiB    # summary.json with per-layer stage reports
METRICS_MAX_BYTES = 256 * MiB   # metrics.jsonl: ~300 bytes per epoch row
YAML_MAX_NODES = 200_000        # nodes after alias expansion (a config has a few hundred)
INTERPOLATION_MAX = 1 << 20     # characters `${key}` references may expand a document to
SIDE_FILE_MAX_BYTES = 256 * MiB  # evals.jsonl, diagnostics.jsonl, checkpoints' checksum files...
# dataset keys that say where data files are read and written: on resume= they come from the
# user's own command line and environment, never from the folder (whoever made it chose them)
DATA_LOCATION_KEYS = ("root", "source_dir", "download")


def without_data_locations(cfg: dict) -> dict:
    """A copy of a plain config without DATA_LOCATION_KEYS: where the data lives is not part of
    what a resumed run must match (a resumed run takes them from the user, not the folder)."""
    dataset = cfg.get("dataset")
    if not isinstance(dataset, dict):
        return cfg
    return {**cfg, "dataset": {k: v for k, v in dataset.items() if k not in DATA_LOCATION_KEYS}}


class UntrustedFileError(NnoptError):
    """A file of a run folder is not a regular file, too large, or shaped to exhaust memory."""


def read_bytes(path: Path, cap: int) -> bytes:
    """The bytes of a regular file of at most `cap` bytes; FileNotFoundError if missing, else
    UntrustedFileError (one line) for a FIFO, device, socket, folder or an oversized file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise UntrustedFileError(f"{path} is a folder, not a file") from None
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno in (6, 19):  # ENXIO / ENODEV: a FIFO without writer, a socket, a device
            raise UntrustedFileError(f"{path} is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)  # of what was opened: no race between a check and the open
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedFileError(f"{path} is not a regular file (a device, pipe or socket); refused to read it")
        if st.st_size > cap:
            raise UntrustedFileError(f"{path} is {st.st_size} bytes, more than the {cap} a run file can have")
        os.set_blocking(fd, True)
        chunks, left = [], cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > cap:  # grew while we read it
            raise UntrustedFileError(f"{path} is more than the {cap} bytes a run file can have")
        return data
    finally:
        os.close(fd)


def read_text(path: Path, cap: int) -> str:
    """read_bytes decoded as UTF-8; bytes that are not UTF-8 become U+FFFD (readers then see a
    value or a line that does not parse, never an exception)."""
    return read_bytes(path, cap).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------- YAML


def _yaml_loader():
    # OmegaConf's loader: reads numbers such as 1e-3 as floats, as OmegaConf.load does
    from omegaconf._utils import get_yaml_loader

    return get_yaml_loader()


def expanded_size(node: yaml.Node, limit: int) -> int:
    """Nodes in the document once every alias is expanded, stopping past `limit`; linear in
    the distinct nodes (a shared node is sized once), so a bomb is measured, not expanded."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in active:  # a recursive alias: no config has one
            return limit + 1
        active.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        active.discard(key)
        sizes[key] = min(total, limit + 1)
        return sizes[key]

    return size(node)


def load_yaml(text: str, where: str, loader=None, max_nodes: int = YAML_MAX_NODES) -> Any:
    """Parse YAML safely (no Python objects); UntrustedFileError for an alias bomb or an
    interpolation bomb, yaml.YAMLError for bad syntax. Text without '&' or '*' has no anchors: it
    skips the alias walk; text without '${' skips the interpolation walk."""
    loader = loader or _yaml_loader()
    if "&" in text or "*" in text:
        node = yaml.compose(text, Loader=loader)
        if node is not None and expanded_size(node, max_nodes) > max_nodes:
            raise UntrustedFileError(f"{where}: its YAML aliases expand to more than {max_nodes} nodes "
                                     "(an alias bomb?); refused to load it")
    data = yaml.load(text, Loader=loader)
    if "${" in text:
        check_interpolation_size(data, where)
    return data


# ---------------------------------------------------------------------------- interpolation budget

# an innermost `${...}`: nested ones (`${oc.env:${z}}`) are sized from the inside out
_REFERENCE = re.compile(r"\$\{([^${}]*)\}")
_ABSENT = object()


def _referenced_path(parent: tuple, ref: str) -> tuple | None:
    """The key path `${ref}` names from a value whose parent node is at `parent` (OmegaConf's
    rules: `${a.b}` from the root, `${.b}` a sibling, `${..b}` the parent's sibling); None for a
    resolver call, which is sized as written."""
    if ":" in ref:
        return None
    ref = ref.strip()
    dots = len(ref) - len(ref.lstrip("."))
    if dots > len(parent) + 1:
        return None
    base = parent[:len(parent) - (dots - 1)] if dots else ()
    return base + tuple(p for p in ref[dots:].split(".") if p)


def _node_at(root: Any, path: tuple) -> Any:
    node = root
    for p in path:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        else:
            return _ABSENT
    return node


def interpolation_size(data: Any, limit: int = INTERPOLATION_MAX) -> int:
    """The characters `data` holds once every `${key}` reference is expanded, stopping past
    `limit`. Each key is sized once (memoized), so a bomb is measured in linear time, never
    expanded; a reference cycle counts as past the limit (OmegaConf could not resolve it either)."""
    sizes: dict[tuple, int] = {}
    active: set[tuple] = set()

    def size(path: tuple, node: Any) -> int:
        if path in sizes:
            return sizes[path]
        if path in active:
            return limit + 1
        active.add(path)
        total = 1
        if isinstance(node, dict):
            for k, v in node.items():
                total += len(str(k)) + size((*path, str(k)), v)
                if total > limit:
                    break
        elif isinstance(node, list):
            for i, v in enumerate(node):
                total += size((*path, str(i)), v)
                if total > limit:
                    break
        elif isinstance(node, str):
            total = len(node)
            if "${" in node:
                for m in _REFERENCE.finditer(node):
                    target = _referenced_path(path[:-1], m.group(1))
                    found = _ABSENT if target is None else _node_at(data, target)
                    if found is not _ABSENT:
                        total += size(target, found)
                    if total > limit:
                        break
        else:
            total = len(str(node))
        active.discard(path)
        sizes[path] = min(total, limit + 1)
        return sizes[path]

    try:
        return size((), data)
    except RecursionError:  # references chained thousands deep: no config has that
        return limit + 1


def check_interpolation_size(data: Any, where: str, limit: int = INTERPOLATION_MAX) -> None:
    """UntrustedFileError when `data`'s `${key}` references would expand past `limit` characters
    (an interpolation bomb: a 1 kB file of nested `${z}${z}...` expanding to gigabytes) or loop."""
    if interpolation_size(data, limit) > limit:
        raise UntrustedFileError(f"{where}: its ${{key}} references expand to more than {limit} characters "
                                 "or refer to themselves (an interpolation bomb?); refused to resolve it")


# ---------------------------------------------------------------------------- configs


def resolver_calls(value: str) -> list[str]:
    """The resolver names called in an OmegaConf string (`${oc.env:X}` -> ['oc.env'])."""
    from omegaconf import grammar_parser
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as G

    try:
        tree = grammar_parser.parse(value)
    except Exception:  # not a valid interpolation: OmegaConf would refuse it too
        return ["<unparsable>"]
    found, stack = [], [tree]
    while stack:
        t = stack.pop()
        if isinstance(t, G.InterpolationResolverContext):
            found.append(t.resolverName().getText())
        stack.extend(getattr(t, "children", None) or [])
    return found


def _interpolations(node: Any, path: str = ""):
    """(dotted key, string) for every string value that holds an interpolation."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _interpolations(v, f"{path}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _interpolations(v, f"{path}{i}.")
    elif isinstance(node, str) and "${" in node:
        yield path.rstrip("."), node


def refuse_resolvers(cfg: Any, where: str) -> None:
    """UntrustedFileError when a string calls a resolver (`${oc.env:...}`): a config read from
    disk may refer to its own keys, never to the environment or to code."""
    for key, text in _interpolations(cfg):
        calls = resolver_calls(text)
        if calls:
            raise UntrustedFileError(f"{where}: {key} calls the resolver {calls[0]!r} ({text[:60]!r}); a run "
                                     "folder's config may only refer to its own keys, so it was not resolved")


def load_config(path: Path, what: str = "config", folder: Path | None = None) -> dict:
    """A run folder's .hydra/config.yaml as a plain dict, interpolations among its own keys
    resolved once. `folder`: the run folder the file must lie in (links followed). Raises
    FileNotFoundError, UntrustedFileError or ValueError (bad YAML/shape) with a one-line message."""
    from omegaconf import OmegaConf

    if folder is not None:
        check_run_file(folder, path, CONFIG_MAX_BYTES)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
    text = read_text(path, CONFIG_MAX_BYTES)
    try:
        data = load_yaml(text, str(path))
    except (yaml.YAMLError, RecursionError) as e:
        raise ValueError(f"not valid YAML ({(str(e).splitlines() or [''])[0][:120]})") from None
    if not isinstance(data, dict):
        raise ValueError("empty" if data is None else f"not a mapping (a {type(data).__name__})")
    refuse_resolvers(data, str(path))
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    except Exception as e:  # a reference to a key that does not exist, a cycle...
        raise ValueError(f"cannot resolve it ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})") from None
    refuse_live_interpolations(resolved, str(path))
    return rename_targets(resolved)


def refuse_live_interpolations(cfg: Any, where: str, key: str = "") -> None:
    """UntrustedFileError for a key or value of an already resolved config that still reads
    `${...}`: an escaped `\\${...}` in the file, which anything resolving the config again (Hydra's
    instantiate, a second OmegaConf.create) would run. A config is resolved once, here."""
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            refuse_live_interpolations(k, where, f"{key}{k} (a key)")
            refuse_live_interpolations(v, where, f"{key}{k}.")
    elif isinstance(cfg, list):
        for i, v in enumerate(cfg):
            refuse_live_interpolations(v, where, f"{key}{i}.")
    elif isinstance(cfg, str) and "${" in cfg:
        raise UntrustedFileError(f"{where}: {key.rstrip('.')} holds an escaped interpolation ({cfg[:60]!r}) that "
                                 "would become live if resolved again; a run folder's config may not hold '${'")


# ---------------------------------------------------------------------------- side files


def inside(folder: Path, path: Path) -> bool:
    """Whether `path`, links followed, lies inside `folder` (links followed too)."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True


def check_run_file(folder: Path, path: Path, cap: int) -> None:
    """UntrustedFileError unless `path` is absent or a regular file of at most `cap` bytes whose
    links, if any, stay inside `folder`: what a run reads back and appends to on resume."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UntrustedFileError(f"{path} is a dangling link; refused to follow it") from None
        return
    except OSError as e:
        raise UntrustedFileError(f"{path} cannot be checked ({e.strerror})") from None
    if not inside(folder, path):
        raise UntrustedFileError(f"{path} is a link to {os.path.realpath(path)}, outside the run folder; refused "
                                 "to read or append to it")
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFileError(f"{path} is not a regular file (a device, pipe or socket); refused to read it")
    if st.st_size > cap:
        raise UntrustedFileError(f"{path} is {st.st_size} bytes, more than the {cap} a run file can have")


def check_run_files(folder: Path, names: dict[str, int]) -> None:
    """check_run_file for each file name -> size cap under `folder`; the folder itself must be a folder."""
    for name, cap in names.items():
        check_run_file(folder, Path(folder) / name, cap)


# ---------------------------------------------------------------------------- renamed targets

# `_target_`s nnopt's own conf/ named before its modules moved, and where they live now. A config
# read from a run folder (and the config inside its checkpoint) is renamed with this table before
# anything compares or checks it, so an old folder resumes, skips and compares like a new one; the
# allow-list (targets.py) still judges the renamed names.
RENAMED_TARGETS = {
    "nnopt_cli.schedulers.wsd": "nnopt_cli.optim.schedulers.wsd",
    "nnopt_cli.schedulers.inverse_sqrt": "nnopt_cli.optim.schedulers.inverse_sqrt",
    "nnopt_cli.optim.warmup_cosine": "nnopt_cli.optim.schedulers.warmup_cosine",
    "nnopt_cli.sweep.SweepReport": "nnopt_cli.sweep.report.SweepReport",
    "nnopt_cli.sweep_compose.ComposeOnce": "nnopt_cli.sweep.compose.ComposeOnce",
}
# modules that moved as a whole: observers users subclassed (nnopt_cli.observers.X)
RENAMED_MODULES = {"nnopt_cli.observers.": "nnopt_cli.training.observers."}


def current_target(name: Any) -> Any:
    """Today's name of a `_target_` value nnopt once wrote under an earlier module path."""
    if not isinstance(name, str):
        return name
    if name in RENAMED_TARGETS:
        return RENAMED_TARGETS[name]
    for old, new in RENAMED_MODULES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def rename_targets(node: Any) -> Any:
    """A copy of a plain config with every `_target_`, at any depth, under its current name."""
    if isinstance(node, dict):
        return {k: current_target(v) if k == "_target_" else rename_targets(v) for k, v in node.items()}
    if isinstance(node, list):
        return [rename_targets(v) for v in node]
    return node


def former_targets(node: Any) -> Any:
    """The inverse of rename_targets: a config as nnopt wrote it before the renames (what the
    fingerprints of old run folders were computed from)."""
    back = {new: old for old, new in RENAMED_TARGETS.items()}

    def old_name(name: Any) -> Any:
        if not isinstance(name, str):
            return name
        if name in back:
            return back[name]
        for old, new in RENAMED_MODULES.items():
            if name.startswith(new):
                return old + name[len(new):]
        return name

    if isinstance(node, dict):
        return {k: old_name(v) if k == "_target_" else former_targets(v) for k, v in node.items()}
    if isinstance(node, list):
        return [former_targets(v) for v in node]
    return node


# ---------------------------------------------------------------------------- summary.json


def parse_int(text: str) -> int | float:
    """JSON integers of any size: beyond 18 digits a float (inf past float range), so a
    hand-edited 10**400 is a value readers can show and skip, never an exception."""
    return int(text) if len(text) <= 19 else float(text)


def json_object(text: str) -> tuple[dict | None, str | None]:
    """(the JSON object in `text`, None), or (None, why not) in a few words; never raises."""
    try:
        obj = json.loads(text, parse_int=parse_int)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({'truncated' if e.pos >= len(text.rstrip()) else e.msg} at byte {e.pos})"
    except (ValueError, RecursionError) as e:  # an integer of more than 4300 digits, nesting too deep
        return None, f"not readable JSON ({type(e).__name__}: {str(e)[:80]})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    return obj, None


def summary_or_reason(run_dir: Path) -> tuple[dict | None, str | None]:
    """(summary.json as a dict, None), or (None, why not): 'missing' or a short reason. The only
    reader of summary.json: missing, unreadable, oversized, not a regular file, not JSON or not
    an object never raises."""
    path = Path(run_dir) / SUMMARY
    try:
        text = read_text(path, SUMMARY_MAX_BYTES)
    except FileNotFoundError:
        return None, "missing"
    except UntrustedFileError as e:
        return None, str(e).removeprefix(f"{path} ")
    except OSError as e:
        return None, f"cannot read it ({e.strerror})"
    return json_object(text)


def read_summary(run_dir: Path) -> dict | None:
    """summary.json as a dict, or None when it is missing or unusable (see summary_or_reason)."""
    return summary_or_reason(run_dir)[0]
