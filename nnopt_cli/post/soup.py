"""Model soups (Wortsman et al. 2022): one model whose weights are the average of several runs'
weights, for runs fine-tuned from one parent (the same architecture, started from the same weights).

    uniform  the mean of every run's weights
    greedy   runs sorted by validation accuracy, best first; each joins the soup if the soup's
             validation accuracy does not drop with it

A soup costs one model at inference; it is measured beside the best single run (chosen by
validation accuracy, never by test accuracy) and, on request, the ensemble of the same runs (the
mean of their softmaxes: as many forward passes as runs). The run folders are untrusted input:
configs through the guarded reader and allow-list, weights through safe_load (post/load.py).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from nnopt_cli.errors import NnoptError
from nnopt_cli.post.ensemble import Ensemble
from nnopt_cli.post.load import load_run_model, read_run_config, trained_shape
from nnopt_cli.store import layout
from nnopt_cli.store.folder import RunDir, atomic_write_bytes, save_state_dict
from nnopt_cli.store.untrusted import summary_or_reason, without_data_locations
from nnopt_cli.training.metrics import evaluate

METHODS = ("uniform", "greedy")
PARENT_KEYS = ("init_from", "continue_from")  # where a fine-tuned run's weights started

State = dict[str, torch.Tensor]


class FuseError(NnoptError):
    """Runs that cannot be fused, or a soup that cannot be made."""


@dataclass
class Member:
    run: Path
    cfg: dict  # its .hydra/config.yaml, read as untrusted
    model: nn.Module
    shape: tuple[int, ...]
    num_classes: int
    scores: dict[str, Any] = field(default_factory=dict)  # val/acc, test/acc, ... measured here

    @property
    def state(self) -> State:
        return self.model.state_dict()


def load_members(runs: list[Path], trusted=()) -> list[Member]:
    """The runs' trained models, each folder read as untrusted; FuseError unless they can be fused."""
    if len(runs) < 2:
        raise FuseError(f"a soup needs at least two runs ({len(runs)} given)")
    if len({os.path.realpath(r) for r in runs}) < len(runs):
        raise FuseError("a run is given twice: it would count double in the soup")
    members = []
    for run in runs:
        cfg = read_run_config(run, "RUN", trusted)
        summary, why = summary_or_reason(run)
        status = (summary or {}).get("status")
        if status != layout.Status.COMPLETED:  # a failed or unfinished run's weights are not its result
            detail = f"{layout.SUMMARY}: {why}" if summary is None else f"status {status}"
            raise FuseError(f"{run}: not a completed run ({detail}); a soup takes completed runs")
        shape, classes = trained_shape(run, cfg)
        model, cfg = load_run_model(run, shape, classes, trusted, key="RUN")
        members.append(Member(run, cfg, model.eval(), shape, classes))
    check_compatible(members)
    return members


def parent_of(cfg: dict) -> str | None:
    """The weights a run started from (init_from / continue_from), as its config names them."""
    for key in PARENT_KEYS:
        value = cfg.get(key)
        if value:
            folder, _, file = str(value).partition(":")
            return f"{os.path.normpath(folder)}{':' + file if file else ''}"
    return None


def check_compatible(members: list[Member]) -> None:
    """One architecture, one workload's data, one parent: else averaging weights means nothing."""
    first = members[0]
    for m in members[1:]:
        why = None
        if m.cfg.get("model") != first.cfg.get("model") or m.cfg.get("activation") != first.cfg.get("activation"):
            why = "their model configs differ (a soup averages one architecture's weights)"
        elif (m.shape, m.num_classes) != (first.shape, first.num_classes):
            why = f"their inputs differ ({list(m.shape)}, {m.num_classes} classes vs {list(first.shape)}, " \
                  f"{first.num_classes})"
        elif without_data_locations(m.cfg).get("dataset") != without_data_locations(first.cfg).get("dataset"):
            why = "they trained on different data (dataset settings differ)"
        elif parent_of(m.cfg) != parent_of(first.cfg):
            why = (f"they start from different weights (init_from/continue_from: {parent_of(first.cfg)} vs "
                   f"{parent_of(m.cfg)}); a soup averages runs fine-tuned from one parent")
        else:
            a, b = first.state, m.state
            bad = next((k for k in a if k not in b or a[k].shape != b[k].shape or a[k].dtype != b[k].dtype), None)
            if bad is not None or a.keys() != b.keys():
                why = f"their weights differ in shape or type ({bad or 'the parameter names differ'})"
        if why:
            raise FuseError(f"cannot fuse {first.run} and {m.run}: {why}")


def average(states: list[State]) -> State:
    """The mean of each floating-point tensor (in float64, back to its own dtype); integer buffers
    (BatchNorm's step count) from the first state."""
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in states[0].items()}


def score(model: nn.Module, data, batch_size: int) -> dict[str, Any]:
    """Validation and test loss/accuracy of `model`, in fp32."""
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        loss, acc = evaluate(model, x, y, batch_size)
        out.update({f"{split}/loss": loss, f"{split}/acc": acc, f"{split}/errors": round((1 - acc) * len(y))})
    return out


@dataclass
class Soup:
    method: str
    state: State
    model: nn.Module  # the soup's weights in the members' architecture
    ingredients: list[Member]  # the runs in the soup, in the order they were added
    scores: dict[str, Any]
    tried: list[dict[str, Any]]  # greedy: each candidate and the soup's val/acc with it


def make_soup(members: list[Member], method: str, data, batch_size: int) -> Soup:
    """Score every member, then cook the soup by `method` (uniform | greedy)."""
    if method not in METHODS:
        raise FuseError(f"--method {method!r}: one of {', '.join(METHODS)}")
    for m in members:
        m.scores = score(m.model, data, batch_size)
    model = _fresh(members[0])

    def val_acc(ms: list[Member]) -> tuple[State, float]:
        state = average([m.state for m in ms])
        model.load_state_dict(state)
        return state, evaluate(model, data.val_x, data.val_y, batch_size)[1]

    tried: list[dict[str, Any]] = []
    if method == "uniform":
        ingredients = list(members)
        state, _ = val_acc(ingredients)
    else:  # best first; ties keep the order given
        ranked = sorted(members, key=lambda m: -m.scores["val/acc"])
        ingredients, (state, best) = [ranked[0]], (ranked[0].state, ranked[0].scores["val/acc"])
        for m in ranked[1:]:
            cand_state, acc = val_acc([*ingredients, m])
            added = acc >= best
            tried.append({"run": str(m.run), "soup_val/acc": acc, "added": added})
            if added:
                ingredients, state, best = [*ingredients, m], cand_state, acc
    model.load_state_dict(state)
    return Soup(method, state, model.eval(), ingredients, score(model, data, batch_size), tried)


def _fresh(member: Member) -> nn.Module:
    """A copy of a member's model to load soups into (the members keep their own weights)."""
    return copy.deepcopy(member.model)


def best_single(members: list[Member]) -> Member:
    """The run a practitioner would pick alone: the best validation accuracy (first of equals)."""
    return max(members, key=lambda m: m.scores["val/acc"])


def ensemble_scores(members: list[Member], data, batch_size: int) -> dict[str, Any]:
    """The ensemble of the members: argmax of the mean of their softmaxes."""
    return score(Ensemble([m.model for m in members]).eval(), data, batch_size)


def summary_of(soup: Soup, members: list[Member], ensemble: dict[str, Any] | None) -> dict[str, Any]:
    """summary.json of a soup's folder: the soup's numbers at the top (what compare and ls show),
    each member's, the best single run's and the ensemble's beside them."""
    best = best_single(members)
    first = soup.ingredients[0]
    in_soup = {id(m) for m in soup.ingredients}
    fuse: dict[str, Any] = {
        "method": soup.method,
        "parent": parent_of(first.cfg),
        "members": [{"run": str(m.run), "in_soup": id(m) in in_soup, **m.scores} for m in members],
        "soup": [str(m.run) for m in soup.ingredients],
        "best_single": {"run": str(best.run), **best.scores},
    }
    if soup.tried:
        fuse["greedy_steps"] = soup.tried
    summary: dict[str, Any] = {
        "status": layout.Status.COMPLETED,
        **soup.scores,
        "params": sum(p.numel() for p in soup.model.parameters()),
        "data": {"input_shape": list(first.shape), "num_classes": first.num_classes},
        "best_single/val/acc": best.scores["val/acc"],
        "best_single/test/acc": best.scores["test/acc"],
    }
    if ensemble is not None:
        fuse["ensemble"] = {"runs": [str(m.run) for m in members], **ensemble}
        summary.update({"ensemble/val/acc": ensemble["val/acc"], "ensemble/test/acc": ensemble["test/acc"]})
    summary["fuse"] = fuse
    summary["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return summary


def shared_config(cfgs: list[Any]) -> Any:
    """What the configs agree on; a setting they differ in (seed, lr, ...) is null: no single value
    of it made the soup, so none is shown beside its numbers."""
    if all(isinstance(c, dict) for c in cfgs):
        keys = list(dict.fromkeys(k for c in cfgs for k in c))
        return {k: shared_config([c.get(k) for c in cfgs]) for k in keys}
    return cfgs[0] if all(c == cfgs[0] for c in cfgs) else None


def write_folder(out: Path, soup: Soup, summary: dict[str, Any]) -> RunDir:
    """A run-like folder: .hydra/config.yaml (what the ingredients' configs share, and a `fuse` node
    so compare never takes the soup for one of its runs), model.pt, and summary.json written last,
    so a folder cut short by a kill never reads as completed."""
    run = RunDir(out)
    cfg = {**shared_config([m.cfg for m in soup.ingredients]),
           "fuse": {"method": soup.method, "runs": [m["run"] for m in summary["fuse"]["members"]],
                    "soup": summary["fuse"]["soup"]}}
    (run.path / layout.HYDRA_DIR).mkdir(exist_ok=True)
    atomic_write_bytes(run.path / layout.CONFIG, yaml.safe_dump(cfg, sort_keys=False).encode())
    save_state_dict(run.model_path, {k: v.detach().cpu() for k, v in soup.state.items()})
    run.write_summary(summary)
    return run
