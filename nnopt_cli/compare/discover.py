"""Find run folders below some paths and read each one tolerantly.

A run folder is what `nnopt train` writes: `.hydra/config.yaml` (the composed config),
`.hydra/hydra.yaml` (Hydra's runtime info, whose `runtime.choices` names the option picked in
each config group), `.hydra/overrides.yaml`, `metrics.jsonl` and `summary.json`. Only those
files are read, never written. A missing, truncated or corrupt file never raises: the run gets
a status that says so (`incomplete`, `corrupt`) and a one-line note for the user.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnopt_cli.compare.files import hydra_choices, read_jsonl, read_yaml
from nnopt_cli.config import conf_dir
from nnopt_cli.store import layout
from nnopt_cli.store.layout import NON_EXPERIMENT_KEYS, PLACE_KEYS, Status, experiment_config
from nnopt_cli.store.untrusted import rename_targets, summary_or_reason

# summary.json keys that describe the run rather than measure it
SUMMARY_INFO_KEYS = {"status", "device", "device_name", "precision", "versions", "git_sha", "started_at",
                     "finished_at", "stop_reason", "message", "error", "traceback", "diverged_at", "stages",
                     "threads", "restored_epoch", "resumed_from_epoch", "world_size", "config_sha",
                     "format"}
# sub-configs a group's options all include (conf/post/measure.yaml), not options themselves
SHARED_SUBCONFIGS = {"measure"}
# summary keys whose plain name is also a config key (`epochs` is the limit, not the epochs run)
SUMMARY_RENAME = {"epochs": "epochs_run"}
# metrics.jsonl keys that are not per-epoch measurements
EPOCH_INFO_KEYS = {"epoch", "stage"}


@dataclass
class Stage:
    """One post-training stage from summary.json: its name and the numbers measured after it."""

    name: str
    settings: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass
class Run:
    path: Path
    label: str                                             # the folder, relative to the path given
    status: str                                            # summary's status, or incomplete / corrupt
    config: dict[str, Any] = field(default_factory=dict)   # flat dotted keys, plus one key per config group
    summary: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)       # metrics.jsonl rows of training
    stage_epochs: list[dict[str, Any]] = field(default_factory=list)  # rows tagged with "stage"
    stages: list[Stage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    identity: str | None = None  # the experiment its config computes (same text: a duplicate run)
    _metrics: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def completed(self) -> bool:
        return self.status == Status.COMPLETED

    def metrics(self) -> dict[str, Any]:
        """Final numbers: the last training epoch's row, then the summary, then each stage's results.
        Computed once (the table asks for them per column); do not change the run afterwards."""
        if self._metrics is None:
            self._metrics = self._final_metrics()
        return self._metrics

    def _final_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.epochs:  # lr, batch_size, ... become final/lr, final/batch_size: config keys are named so too
            out.update({k if "/" in k else f"final/{k}": v
                        for k, v in self.epochs[-1].items() if k not in EPOCH_INFO_KEYS})
        out.update({SUMMARY_RENAME.get(k, k): v for k, v in self.summary.items() if k not in SUMMARY_INFO_KEYS})
        for st in self.stages:
            out.update(stage_metrics(st))
        return {k: v for k, v in out.items() if is_number(v) or v is None}


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def stage_metrics(stage: Stage) -> dict[str, Any]:
    """`<stage>/<key>` for every number measured after the stage; sparsity from nonzeros/params."""
    after = flatten({k: v for k, v in stage.after.items() if k != "layers"})  # per-layer detail: too many columns
    out = {f"{stage.name}/{k}": v for k, v in after.items() if is_number(v) or v is None}
    nz, n = stage.after.get("nonzeros"), stage.after.get("params")
    if "sparsity" not in stage.after and is_number(nz) and is_number(n) and n > 0:
        out[f"{stage.name}/sparsity"] = 1.0 - nz / n
    return out


# ---------------------------------------------------------------------------- discovery


def natural_key(name: str) -> list:
    """Sweep job folders in numeric order: 2 before 10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def find_run_dirs(root: Path) -> list[Path]:
    """Every run folder at or below root, in natural order; does not look inside run folders."""
    found: list[Path] = []

    def walk(d: str) -> None:
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            return
        names = {e.name for e in entries}
        if layout.SUMMARY in names or layout.METRICS in names or (
                layout.HYDRA_DIR in names and os.path.isfile(os.path.join(d, layout.CONFIG))):
            found.append(Path(d))
            return
        for e in sorted(entries, key=lambda e: natural_key(e.name)):
            if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                walk(e.path)

    walk(str(root))
    return found


_INTERP = re.compile(r"\$\{([^}]*)\}")


class Unresolvable(Exception):
    pass


def resolve(cfg: dict) -> dict:
    """Resolve `${key}` / `${.key}` interpolations the way OmegaConf does, without OmegaConf
    (building an OmegaConf object per run is what would make 1,000 runs slow). Anything else
    (resolver calls such as `${now:...}` or `${oc.env:VAR}`) stays as written: a run folder is
    untrusted, and compare never looks values up in the environment."""
    try:
        return _resolve_node(cfg, cfg, [], 0)
    except Unresolvable:
        return _resolve_node(cfg, cfg, [], 0, lenient=True)


def _lookup(root: dict, node_path: list[str], ref: str, depth: int, lenient: bool = False) -> Any:
    if ":" in ref or depth > 20:
        raise Unresolvable(ref)
    dots = len(ref) - len(ref.lstrip("."))
    parts = [p for p in ref[dots:].split(".") if p]
    base = node_path[:len(node_path) - (dots - 1)] if dots else []
    if dots > len(node_path) + 1:
        raise Unresolvable(ref)
    value: Any = root
    for p in [*base, *parts]:
        if isinstance(value, dict) and p in value:
            value = value[p]
        elif isinstance(value, list) and p.isdigit() and int(p) < len(value):
            value = value[int(p)]
        else:
            raise Unresolvable(ref)
    return _resolve_node(value, root, [*base, *parts], depth + 1, lenient)


def _resolve_node(v: Any, root: dict, node_path: list[str], depth: int, lenient: bool = False) -> Any:
    """lenient: an interpolation that cannot be resolved here stays as written."""
    if isinstance(v, dict):
        return {k: _resolve_node(x, root, [*node_path, str(k)], depth, lenient) for k, x in v.items()}
    if isinstance(v, list):
        return [_resolve_node(x, root, node_path, depth, lenient) for x in v]
    if isinstance(v, str) and "${" in v:
        # node_path ends with this value's own key; relative refs start from its parent node
        parent = node_path[:-1]

        def one(m: re.Match) -> Any:
            try:
                return _lookup(root, parent, m.group(1), depth, lenient)
            except Unresolvable:
                if not lenient:
                    raise
                return m.group(0)

        m = _INTERP.fullmatch(v)
        if m:
            return one(m)
        return _INTERP.sub(lambda m: str(one(m)), v)
    return v


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


_GROUPS: list[str] | None = None


def config_groups() -> list[str]:
    """nnopt's config groups: the folders of conf/ (optimizer, scheduler, ...)."""
    global _GROUPS
    if _GROUPS is None:
        try:
            _GROUPS = sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name != "experiment")
        except (OSError, FileNotFoundError):
            _GROUPS = []
    return _GROUPS


def group_label(node: Any) -> str | None:
    """A readable name for a group's config when Hydra recorded no choice (e.g. a list of
    regularizers): its `name`, the class of its `_target_`, or its sub-keys joined by '+'."""
    if not isinstance(node, dict):
        return None
    if isinstance(node.get("name"), str):
        return node["name"]
    if isinstance(node.get("_target_"), str):
        return node["_target_"].rsplit(".", 1)[-1]
    return "+".join(str(k) for k in node if k not in SHARED_SUBCONFIGS) or "none"


# ---------------------------------------------------------------------------- one run


def read_run(path: Path, label: str) -> Run:
    run = Run(path=path, label=label, status=Status.COMPLETED)
    summary, why = summary_or_reason(path)
    if summary is None:
        if why == "missing":
            run.status = "incomplete"
            run.problems.append("no summary.json (still running, or stopped before writing it)")
        else:
            run.status = "corrupt"
            run.problems.append(f"summary.json: {why}")
    else:
        run.summary = summary
        run.status = str(summary.get("status") or "unknown")

    raw, why = read_yaml(path / layout.CONFIG)
    if isinstance(raw, dict):
        cfg = resolve(rename_targets(raw))  # an older folder's `_target_`s under today's names
        flat = flatten(cfg)
        choices = hydra_choices(path / layout.HYDRA_CONFIG)
        for g in config_groups():
            if g in cfg and g not in choices:
                label_ = group_label(cfg[g])
                if label_ is not None:
                    choices[g] = label_
        # a group's choice sits under the group's own name: `optimizer` = adam, `optimizer.lr` = 0.001
        run.config = {**{k: v for k, v in choices.items() if k not in flat}, **flat}
        run.identity = identity(cfg, choices)
    else:
        run.status = "corrupt"
        run.problems.append(f".hydra/config.yaml: {why if why else 'not a mapping'}")

    rows, note = read_jsonl(path / layout.METRICS)
    if note:
        run.problems.append(note)
    run.epochs = [r for r in rows if "stage" not in r]
    run.stage_epochs = [r for r in rows if "stage" in r]

    seen: dict[str, int] = {}
    stages = run.summary.get("stages")
    for i, st in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(st, dict):
            continue
        name = str(st.get("name") or f"stage{i + 1}")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:  # the same stage twice: prune, prune.2
            name = f"{name}.{seen[name]}"
        run.stages.append(Stage(name, _dict(st.get("settings")), _dict(st.get("before")), _dict(st.get("after"))))
    return run


def identity(cfg: dict, choices: dict[str, Any]) -> str:
    """The experiment a resolved config computes, as text: its experiment_config (the keys the
    checkpoint's fingerprint uses) without the keys that say where it ran (PLACE_KEYS), and the
    option chosen in each config group (two options may hold the same values)."""
    ignored = (*NON_EXPERIMENT_KEYS, *PLACE_KEYS)
    picked = {g: v for g, v in choices.items() if g.split("/")[0] not in ignored}
    exp = experiment_config(cfg)
    for dotted in PLACE_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = exp
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node = _copy_path(exp, parents)
            del node[leaf]
    return json.dumps([exp, picked], sort_keys=True, default=str)


def _copy_path(d: dict, parents: list[str]) -> dict:
    """The node at `parents`, copied on the way down (experiment_config shares nested dicts with the
    caller's config)."""
    node = d
    for p in parents:
        node[p] = dict(node[p])
        node = node[p]
    return node


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def discover(paths: list[Path]) -> list[Run]:
    """Every run below the given paths, read; labels are paths relative to the path given."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for root in paths:
        for d in find_run_dirs(root):
            real = d.resolve()
            if real in seen:
                continue
            seen.add(real)
            rel = os.path.relpath(d, root)
            label = d.name if rel == "." else rel
            if len(paths) > 1 and rel != ".":
                label = os.path.join(root.name or str(root), rel)
            runs.append(read_run(d, label))
    return runs


def finite(v: Any) -> bool:
    """A number that is neither NaN nor infinite, and fits a float (JSON allows any integer)."""
    if not is_number(v):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond float range
        return False
