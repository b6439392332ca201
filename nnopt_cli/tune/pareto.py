"""The result of a multi-objective study: its Pareto front (Optuna's `study.best_trials`, the
completed trials no other completed trial dominates) as pareto.json and, for two objectives, a
scatter plot pareto.png in the study folder.

    pareto.json  {study, objectives: [{name, direction}], front: [{trial, params, values, run_dir,
                 overrides, retrain}], trials: [{trial, values, on_front}] (every completed trial),
                 counts, plot: "pareto.png" or null, plot_note}

Three or more objectives are not plotted (a pairwise view hides which points dominate which): the
table is the result, and plot_note says so.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import TrialState

from nnopt_cli.store import layout
from nnopt_cli.store.outputs import figure_png, write_files
from nnopt_cli.tune.objectives import Objective
from nnopt_cli.tune.study import write_best

NOT_PLOTTED = "{n} objectives: the front is the table (pareto.png is drawn for two objectives only)"


def record(study: optuna.Study, objs: list[Objective], preset, base: list[str], folder,
           counts: dict[str, int]) -> dict[str, Any] | None:
    """pareto.json's content, or None when no trial completed."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    front = sorted(study.best_trials, key=lambda t: t.number)
    on_front = {t.number for t in front}

    def member(t) -> dict[str, Any]:
        overrides = [*base, *preset.trial_overrides(t.params)]
        return {"trial": t.number, "params": dict(t.params), "values": list(t.values),
                "run_dir": str(folder.run_dir(t.number)), "overrides": overrides,
                "retrain": "nnopt train " + " ".join(overrides)}

    plotted = len(objs) == 2
    return {
        "study": study.study_name,
        "objectives": [o.as_dict() for o in objs],
        "front": [member(t) for t in front],
        "trials": [{"trial": t.number, "values": list(t.values), "on_front": t.number in on_front}
                   for t in sorted(done, key=lambda t: t.number)],
        "counts": counts,
        "plot": layout.PARETO_PLOT if plotted else None,
        "plot_note": None if plotted else NOT_PLOTTED.format(n=len(objs)),
    }


def best_record(rec: dict[str, Any]) -> dict[str, Any]:
    """best.json of a multi-objective study: there is no one best trial, so it names the front's."""
    return {"study": rec["study"], "objectives": rec["objectives"],
            "best_trials": [m["trial"] for m in rec["front"]], "pareto": layout.PARETO,
            "front": [{k: m[k] for k in ("trial", "values", "params", "retrain")} for m in rec["front"]],
            "trials": rec["counts"]}


def axis_label(o: dict[str, str]) -> str:
    return f"{o['name']} ({'higher' if o['direction'] == 'maximize' else 'lower'} is better)"


def figure(rec: dict[str, Any]):
    """All completed trials in grey, the front in colour, joined in the order of the first
    objective and labelled with their trial numbers."""
    from matplotlib.figure import Figure

    ox, oy = rec["objectives"]
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    rest = [t for t in rec["trials"] if not t["on_front"]]
    ax.scatter([t["values"][0] for t in rest], [t["values"][1] for t in rest], color="0.65", s=28,
               label=f"other completed trials ({len(rest)})")
    front = sorted(rec["front"], key=lambda m: m["values"][0])
    xs, ys = [m["values"][0] for m in front], [m["values"][1] for m in front]
    ax.plot(xs, ys, color="tab:red", marker="o", markersize=7, linewidth=1.2,
            label=f"Pareto front ({len(front)} trials)")
    at: dict[tuple, list[str]] = {}  # trials with the same values share one label
    for m in front:
        at.setdefault(tuple(m["values"]), []).append(str(m["trial"]))
    for (x, y), trials in at.items():
        ax.annotate(", ".join(trials), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(axis_label(ox))
    ax.set_ylabel(axis_label(oy))
    ax.set_title(f"{rec['study']}: Pareto front of {len(rec['trials'])} completed trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write(folder, rec: dict[str, Any]) -> None:
    """pareto.json and pareto.png, both or neither (a full disk is one line naming the file), then
    best.json/.yaml; each replaced whole."""
    files: dict[str, bytes | str] = {}
    if rec["plot"]:
        files[layout.PARETO_PLOT] = figure_png(figure(rec))
    files[layout.PARETO] = json.dumps(rec, indent=2) + "\n"  # the values are finite: Optuna was told them
    write_files(folder.path, files)
    write_best(folder, best_record(rec))
