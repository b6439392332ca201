"""What a study optimizes: one number of each trial's summary.json (`tune.objective` and
`tune.direction`), or several at once (`tune.objectives`, a multi-objective study whose result is
a Pareto front).

    tune.objectives:                      # in a preset; a list keeps its order
      - {name: quantize/test/acc, direction: maximize}
      - {name: quantize/size_bytes, direction: minimize}
    tune.objectives='{best/val/acc: maximize, quantize/size_bytes: minimize}'   # the same, shorter

A name is a top-level number of summary.json (best/val/acc, test/acc, time/train_s, ...) or a
number a post-training stage measured after it, `<stage>/<key>` as `nnopt compare` names it
(quantize/size_bytes, prune/flops, quantize/latency_ms.1); `post.<stage>.<key>` reads the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nnopt_cli.errors import ConfigError
from nnopt_cli.post import STAGES

DIRECTIONS = ("maximize", "minimize")
# what every stage measures after itself (post/stage.py measure, latency_ms.<batch size>) and what
# fake quantization adds (the packed size of its simulated bits)
STAGE_KEYS = ("test/loss", "test/acc", "test/errors", "params", "nonzeros", "sparsity", "size_bytes",
              "size_zip_bytes", "size_sparse_bytes", "size_packed_bytes", "flops", "weight_bits")


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # maximize | minimize

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "direction": self.direction}


def canonical(name: str) -> str:
    """post.quantize.size_bytes -> quantize/size_bytes (the name compare shows)."""
    if name.startswith("post.") and name.count(".") >= 2:
        stage, key = name[len("post."):].split(".", 1)
        return f"{stage}/{key}"
    return name


def parse(settings: dict) -> list[Objective]:
    """The study's objectives from its settings: tune.objectives when given, else the single
    tune.objective / tune.direction."""
    given = settings.get("objectives")
    if given is None:
        return [Objective(settings["objective"], settings["direction"])]
    where = "tune.objectives"
    shape = ("a list of {name: <summary.json number>, direction: maximize|minimize}, or a mapping "
             "{<name>: maximize|minimize}")
    if isinstance(given, dict):
        entries = [{"name": k, "direction": v} for k, v in given.items()]
    elif isinstance(given, list):
        entries = given
    else:
        raise ConfigError(where, given, shape)
    out: list[Objective] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or set(e) != {"name", "direction"}:
            raise ConfigError(f"{where}[{i}]", e, shape)
        if not isinstance(e["name"], str) or not e["name"].strip():
            raise ConfigError(f"{where}[{i}].name", e["name"], "a summary.json number such as best/val/acc or "
                                                               "quantize/size_bytes")
        if e["direction"] not in DIRECTIONS:
            raise ConfigError(f"{where}[{i}].direction", e["direction"], "maximize or minimize")
        out.append(Objective(canonical(e["name"].strip()), e["direction"]))
    if len(out) < 2:
        raise ConfigError(where, given, "two or more objectives (one objective: tune.objective and tune.direction)")
    names = [o.name for o in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(where, given, f"each objective once ({twice[0]} is given twice)")
    return out


def stage_key(name: str) -> tuple[str, str] | None:
    """('quantize', 'size_bytes') for a stage's number, None for a top-level summary.json key."""
    stage, _, key = name.partition("/")
    return (stage, key) if stage in STAGES and key else None


def check_stages(objectives: list[Objective], stages: list[str], latency_batch_sizes: list[int]) -> None:
    """Refuse, before any trial, a stage objective the trials cannot measure: a stage they do not
    run, or a key no stage records (a typo would fail every trial)."""
    keys = [*STAGE_KEYS, *(f"latency_ms.{b}" for b in latency_batch_sizes)]
    where = "tune.objectives" if len(objectives) > 1 else "tune.objective"
    for o in objectives:
        sk = stage_key(o.name)
        if sk is None:
            continue
        stage, key = sk
        if stage not in stages:
            runs = f"post=[{','.join(stages)}]" if stages else "no post-training stage"
            add = f"post=[{','.join([*stages, stage])}]" if stages else f"post={stage}"
            raise ConfigError(where, o.name, f"a number of a stage the trials run ({runs}); run {add} "
                                             f"to measure {o.name}")
        if key not in keys:
            raise ConfigError(where, o.name, f"{stage}/<key> with key one of {', '.join(keys)}")


def value_of(summary: dict, name: str) -> float | None:
    """The objective's finite number in a trial's summary.json, or None."""
    sk = stage_key(name)
    if sk is None:
        v = summary.get(name)
    else:
        stage, key = sk
        entries = [s for s in summary.get("stages") or [] if isinstance(s, dict) and s.get("name") == stage]
        v = entries[-1].get("after") if entries else None
        for part in key.split(".") if "/" not in key else [key]:  # latency_ms.1 is nested; test/acc is not
            v = v.get(part) if isinstance(v, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def describe(objectives: list[Objective]) -> str:
    return " and ".join(f"{o.direction} {o.name}" for o in objectives)
