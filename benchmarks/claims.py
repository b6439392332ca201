"""The claims ledger (`make claims`): every testable claim of the source articles, run and decided.

Each claim is a preset, conf/experiment/claims/<name>.yaml, that holds everything about it:

    # Claim: <the claim in words>
    # Expect: <group> better|worse|same [; <group> ...]   what the claim predicts against the baseline
    # Before: nnopt train ...                             (optional) a run the sweep needs first
    #   nnopt compare outputs/claims/<name> --group-by K --baseline B --metric M ...

This script trains each preset's sweep (`nnopt train -m +experiment=claims/<name>`, skip_completed:
a rerun trains only missing jobs), runs its `nnopt compare ... --format json` line, and writes
docs/results/claims.md: per expectation the groups' numbers and compare's own verdict, turned into
supported / not supported / not resolved. `same` claims ("keeps the accuracy") are supported only
when the group is resolved better; a difference these seeds cannot resolve stays `not resolved`,
since compare tests for a difference, not for equivalence.

    python -m benchmarks.claims                    # everything (about half an hour on 2 idle cores)
    python -m benchmarks.claims --only l2,dropout  # some claims; the page keeps the others' rows
    python -m benchmarks.claims --no-train         # rewrite the page from the runs already there
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "conf" / "experiment" / "claims"
PAGE = REPO / "docs" / "results" / "claims.md"
WALLS = REPO / "outputs" / "claims" / "walls.json"  # seconds each claim's sweep took when it was trained
DIRECTIONS = ("better", "worse", "same")


@dataclasses.dataclass(frozen=True)
class Claim:
    name: str
    text: str
    expect: list[tuple[str, str]]  # (group, better | worse | same)
    compare: list[str]             # the `nnopt compare ...` words
    before: list[str]              # a `nnopt train ...` to run first, or []

    @property
    def metric(self) -> str:
        return option(self.compare, "--metric").split(",")[0]

    @property
    def group_by(self) -> list[str]:
        return option(self.compare, "--group-by").split(",")

    @property
    def baseline(self) -> str:
        return option(self.compare, "--baseline")


def option(words: list[str], flag: str) -> str:
    if flag not in words or words.index(flag) + 1 >= len(words):
        raise ValueError(f"the compare line has no {flag}: {shlex.join(words)}")
    return words[words.index(flag) + 1]


def read_claim(path: Path) -> Claim:
    """A preset's claim, expectations and commands, from its header comments."""
    text, expect, compare, before = "", [], [], []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            continue
        body = line.lstrip("#").strip()
        if body.startswith("Claim:"):
            text = body.removeprefix("Claim:").strip()
        elif body.startswith("Expect:"):
            for part in body.removeprefix("Expect:").split(";"):
                group, _, direction = part.strip().rpartition(" ")
                if direction not in DIRECTIONS or not group:
                    raise ValueError(f"{path.name}: Expect wants '<group> better|worse|same', got {part.strip()!r}")
                expect.append((group, direction))
        elif body.startswith("Before:"):
            before = shlex.split(body.removeprefix("Before:"))
        elif body.startswith("nnopt compare"):
            compare = shlex.split(body)
    if not (text and expect and compare):
        raise ValueError(f"{path.name}: needs '# Claim:', '# Expect:' and an '#   nnopt compare' line")
    return Claim(path.stem, text, expect, compare, before)


def claims() -> list[Claim]:
    return [read_claim(p) for p in sorted(PRESETS.glob("*.yaml"))]


def ledger_verdict(expected: str, verdict: str) -> str:
    """compare's verdict of a group against the baseline -> what it says of the claim."""
    if verdict == expected or (expected == "same" and verdict == "better"):
        return "supported"
    if verdict in ("better", "worse"):
        return "not supported"
    return "not resolved"


def group_key(row: dict, keys: list[str]) -> str:
    """A group's name as --baseline spells it: its --group-by values, comma separated."""
    from nnopt_cli.compare.decide import baseline_values

    return ",".join(baseline_values(row, keys))


def spread(row: dict, metric: str) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    return "n/a" if mean is None else f"{mean:.4f} ± {std or 0:.4f}"


def rows_for(claim: Claim, groups: list[dict]) -> list[dict]:
    """One ledger row per expectation, from compare's JSON groups."""
    by_name = {group_key(g, claim.group_by): g for g in groups}
    base = by_name.get(claim.baseline)
    out = []
    for group, expected in claim.expect:
        g = by_name.get(group)
        if g is None or base is None:
            missing = group if g is None else claim.baseline
            out.append({"claim": claim.name, "group": group, "expected": expected, "verdict": "no runs",
                        "ledger": f"not run (no runs of {missing})"})
            continue
        lo, hi = g.get("P(better)_lo"), g.get("P(better)_hi")
        out.append({
            "claim": claim.name, "group": group, "expected": expected,
            "group_value": spread(g, claim.metric), "baseline_value": spread(base, claim.metric),
            "runs": f"{g.get('runs')} / {base.get('runs')}",
            "p_better": "n/a" if g.get("P(better)") is None else f"{g['P(better)']:.2f} [{lo:.2f}, {hi:.2f}]",
            "p_mw": "n/a" if g.get("p_mw") is None else f"{g['p_mw']:.3g}",
            "verdict": g.get("verdict", "n/a"), "seeds": g.get("seeds to resolve") or "",
            "ledger": ledger_verdict(expected, g.get("verdict", "")),
        })
    return out


def compare_json(claim: Claim) -> list[dict]:
    words = [*claim.compare[1:], "--format", "json"]  # drop "nnopt"
    out = subprocess.run([sys.executable, "-m", "nnopt_cli", *words], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise SystemExit(f"{shlex.join(claim.compare)} failed:\n{out.stderr[-1500:]}")
    return json.loads(out.stdout)


def train(claim: Claim, threads: int) -> float:
    """Run the claim's sweep (and its `Before:` run if that has not completed); wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    if claim.before:
        folder = next((w.split("=", 1)[1] for w in claim.before if w.startswith("hydra.run.dir=")), None)
        done = folder and (REPO / folder / "summary.json").is_file()
        if not done:
            subprocess.run([sys.executable, "-m", "nnopt_cli", *claim.before[1:], f"threads={threads}"],
                           cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "nnopt_cli", "train", "-m", f"+experiment=claims/{claim.name}",
                    f"threads={threads}"], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def markdown(claims_: list[Claim], rows: list[dict], walls: dict[str, float], machine: str) -> str:
    texts = {c.name: c for c in claims_}
    lines = [
        "# Results: the articles' claims, tested",
        "",
        "Each testable claim of the source articles, run as a preset of `conf/experiment/claims/` (8 seeds per",
        "group, MNIST-1D unless the preset says otherwise) and decided by `nnopt compare --baseline`: P(better) is",
        "the chance that a run of the group beats a run of the baseline, `p_mw` the two-sided Mann-Whitney p, and",
        "compare's verdict is `better` / `worse` only when both tests reject at 0.05. The ledger's verdict maps it",
        "to the claim: `supported` (compare found what the claim predicts), `not supported` (it found the opposite),",
        "`not resolved` (these seeds cannot tell; `seeds to resolve` says how many might). For claims that",
        "something *keeps* the accuracy, `not resolved` means no difference was found, which is not a proof of",
        "none. Rerun everything with `make claims` (trains only the missing runs), one claim with the commands",
        "in its preset.",
        "",
        machine,
        "",
        "| claim | group vs baseline | metric | group | baseline | runs | P(better) [95% CI] | p_mw | compare | "
        "seeds to resolve | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = texts[r["claim"]]
        lines.append(
            f"| [{c.name}](#{c.name.replace('_', '-')}) | {r['group']} vs {c.baseline} ({r['expected']}) | "
            f"{c.metric} | {r.get('group_value', '')} | {r.get('baseline_value', '')} | {r.get('runs', '')} | "
            f"{r.get('p_better', '')} | {r.get('p_mw', '')} | {r['verdict']} | {r.get('seeds', '')} | "
            f"**{r['ledger']}** |")
    lines += ["", "## The claims", ""]
    for c in claims_:
        wall = f" Trained in {walls[c.name]:.0f} s." if c.name in walls else ""
        lines += [f"### {c.name.replace('_', '-')}", "", f"{c.text[:1].upper()}{c.text[1:]}.{wall}", "", "```bash"]
        if c.before:
            lines.append(shlex.join(c.before))
        lines += [f"nnopt train -m +experiment=claims/{c.name}", shlex.join(c.compare), "```", ""]
    return "\n".join(lines)


def machine_line(wall: float | None, load: tuple[float, float], trained_s: float) -> str:
    import torch

    when = datetime.date.today().isoformat()
    if wall is not None:
        took = (f"the whole ledger trained in {wall / 60:.1f} min, load average {load[0]:.1f} at the start and "
                f"{load[1]:.1f} at the end.")
    else:
        took = f"the sweeps took {trained_s / 60:.1f} min in all when they were trained (see each claim)."
    return (f"Written on {when}: {platform.machine()} CPU, {os.cpu_count()} cores, no GPU, torch "
            f"{torch.__version__.split('+')[0]}, Python {platform.python_version()}, threads=1 per run; {took}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="comma list of claim names (default: all)")
    p.add_argument("--no-train", action="store_true", help="only compare the runs already in outputs/claims")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=PAGE)
    p.add_argument("--note", default="", help="a sentence for the page's header: how busy the machine was")
    a = p.parse_args(argv)
    every = claims()
    chosen = [c for c in every if not a.only or c.name in a.only.split(",")]
    unknown = set(filter(None, a.only.split(","))) - {c.name for c in every}
    if unknown:
        raise SystemExit(f"unknown claim(s) {sorted(unknown)}; the claims: {', '.join(c.name for c in every)}")
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    walls = json.loads(WALLS.read_text()) if WALLS.is_file() else {}
    for c in chosen:
        if not a.no_train:
            walls[c.name] = train(c, a.threads)
            print(f"{c.name}: trained in {walls[c.name]:.0f} s", flush=True)
            WALLS.write_text(json.dumps(walls, indent=1))  # the page states each claim's time, even after --no-train
    wall = None if a.no_train or a.only else time.perf_counter() - t0
    rows = [r for c in every for r in rows_for(c, compare_json(c) if (REPO / "outputs/claims" / c.name).is_dir()
                                               else [])]
    machine = machine_line(wall, (load0, os.getloadavg()[0]), sum(walls.get(c.name, 0) for c in every))
    a.out.write_text(markdown(every, rows, walls, " ".join(filter(None, [machine, a.note]))) + "\n")
    for r in rows:
        print(f"{r['claim']:18} {r['group']:>14} vs baseline: {r['verdict']:>13} -> {r['ledger']}")
    print(f"wrote {a.out.relative_to(REPO) if a.out.is_relative_to(REPO) else a.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
