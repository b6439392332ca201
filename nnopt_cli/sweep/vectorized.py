"""Which jobs of a sweep can train together as one vectorized model (hydra/launcher=vectorized).

Jobs whose configs are the same but for `seed` and `optimizer.lr` form a group, when the config is one
training/vectorized.py can train that way (why_not); every other job runs on its own, with a line
saying why.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

from nnopt_cli.training.vectorized import why_not

# what may differ between the members of a group (every vectorized optimizer's update is linear in the LR)
MEMBER_KEYS = (("seed",), ("optimizer", "lr"))


@dataclass
class Plan:
    jobs: list[int]  # positions in the sweep's job list
    alone_because: str | None = None  # why these jobs run one by one (None: together)


def _shared_part(cfg: dict) -> str:
    rest = copy.deepcopy(cfg)
    for path in MEMBER_KEYS:
        node = rest
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return json.dumps(rest, sort_keys=True, default=str)


def plan(configs: list[dict | None], max_members: int = 64) -> list[Plan]:
    """Groups of jobs that train together, and the jobs that run on their own with the reason, in
    the order of their first job. `configs`: each job's resolved config (None: it could not be
    resolved; the job runs on its own and reports its own error)."""
    plans: list[Plan] = []
    open_groups: dict[str, Plan] = {}
    for i, cfg in enumerate(configs):
        if cfg is None:
            plans.append(Plan([i], "its config does not resolve"))
            continue
        why = why_not(cfg)
        if why is not None:
            plans.append(Plan([i], why))
            continue
        key = _shared_part(cfg)
        group = open_groups.get(key)
        if group is None or len(group.jobs) >= max_members:
            group = open_groups[key] = Plan([])
            plans.append(group)
        group.jobs.append(i)
    for p in plans:
        if p.alone_because is None and len(p.jobs) == 1:
            p.alone_because = "no other job of the sweep differs from it only in seed and optimizer.lr"
    return plans
