"""A study as one shareable file, for `nnopt report` (cli/report.py): HTML or Markdown.

    pipeline.prepare (the table `nnopt compare` prints, with --stats when grouped) -> build: the
    workloads, the table and its notes, a multi-objective study's Pareto front, the verdicts in words, every figure the runs allow (curves,
    time to target, LR sensitivity, profile, diagnostics, compression tradeoffs; the others are
    named with the reason they are left out), each run's command and the versions that ran it
    -> to_html (one self-contained file: CSS inline, figures as base64 PNG, no script, no network)
    or to_markdown (figures written beside it).

Every string from a run folder is escaped: a folder may come from someone else, and a config
value `<script>` must read as text.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nnopt_cli import __version__
from nnopt_cli.compare import pareto, pipeline, workload
from nnopt_cli.compare.decide import SEEDS, group_name
from nnopt_cli.compare.discover import Run
from nnopt_cli.compare.files import read_yaml
from nnopt_cli.compare.pipeline import Study
from nnopt_cli.compare.render import STATUS_STYLE, fmt, is_numeric_column
from nnopt_cli.compare.table import CompareError, Table, hashable
from nnopt_cli.store import layout


@dataclass
class Image:
    name: str      # file stem of the Markdown output's PNG: curves, target, ...
    title: str
    caption: str
    png: bytes


@dataclass
class Report:
    title: str
    summary: str                                # how many runs, from where
    workloads: list[tuple[str, int, int]]       # label, runs, completed runs
    table: Table
    verdicts: list[str]
    images: list[Image] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)   # figures not drawn, and why
    commands: list[tuple[str, str]] = field(default_factory=list)  # run, its `nnopt train` command
    versions: list[tuple[str, int]] = field(default_factory=list)  # versions and git commit, runs
    fronts: list[tuple[str, Table]] = field(default_factory=list)  # multi-objective studies' Pareto fronts


# the figures a report tries, in its order: (plot kind, title, what the reader sees)
FIGURES = (
    ("curves", "Curves", "per epoch: mean over each group's completed runs, band ± one sample std"),
    ("target", "Time to target", "median time to the target per group, whiskers: 95% bootstrap CI"),
    ("lr", "LR sensitivity", "final metric against optimizer.lr, one line per optimizer and workload; "
                             "star: its tuned LR, dotted line: its config's default LR"),
    ("profile", "Performance profile", "AlgoPerf profile over the workloads: the share of workloads a "
                                       "group reaches the target within tau times the fastest"),
    ("diag", "Diagnostics", "per-layer gradient norm per optimizer step (diagnostics.jsonl)"),
    ("tradeoff", "Compression tradeoffs", "accuracy against size after each post-training stage, "
                                          "Pareto front per workload"),
)


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    return buf.getvalue()


def images(args: argparse.Namespace, study: Study) -> tuple[list[Image], list[str]]:
    """Every figure these runs allow, and a line for each one they do not."""
    found, skipped = [], []
    for kind, title, caption in FIGURES:
        why = _not_drawn(kind, args, study)
        if why is None:
            try:
                metric = pipeline.check_plot(args, kind, study.runs, study.shown, study.metrics)
                fig = pipeline.figure(args, kind, study, metric)
            except CompareError as e:
                why = str(e)
            else:
                found.append(Image(kind, title, caption if metric is None else f"{metric}: {caption}", png(fig)))
                continue
        skipped.append(f"{title}: {why}")
    return found, skipped


def _not_drawn(kind: str, args, study: Study) -> str | None:
    if kind in ("target", "profile") and not study.targets:
        return "no --target given (e.g. --target val/acc=0.97)"
    if kind == "profile":
        if not study.group_by:
            return "needs --group-by"
        n = len({workload.of(r, workload.columns(study.shown, study.group_by)) for r in study.shown})
        if n < 2:
            return f"ranks groups across workloads; these runs are on {n}"
    if kind == "lr" and not any(len(lrs) > 1 for lrs in _lrs_per_optimizer(study.shown).values()):
        return "no optimizer was run at more than one optimizer.lr"
    if kind == "diag" and not any((r.path / layout.DIAGNOSTICS).exists() for r in study.shown):
        return "no run recorded diagnostics (train with diagnostics=basic or full)"
    if kind == "tradeoff" and not any(r.stages for r in study.shown if r.completed):
        return "no completed run has post-training stages"
    return None


def _lrs_per_optimizer(runs: list[Run]) -> dict[Any, set]:
    out: dict[Any, set] = {}
    for r in runs:
        if "optimizer.lr" in r.config:
            out.setdefault(hashable(r.config.get("optimizer")), set()).add(hashable(r.config["optimizer.lr"]))
    return out


def verdicts(table: Table, keys: list[str], metric: str | None, baseline: str | None) -> list[str]:
    """The --baseline columns in words, one line per group."""
    if not baseline or not any("verdict" in row for row in table.rows):
        return []
    lines = []
    for row in table.rows:
        name, verdict = group_name(row, keys), row.get("verdict")
        evidence = f"P(better) = {fmt(row.get('P(better)'))}, Mann-Whitney p = {fmt(row.get('p_mw'))}"
        if verdict == "baseline":
            lines.append(f"{name} is the baseline ({row.get('runs')} runs).")
        elif verdict in ("better", "worse"):
            lines.append(f"{name} is {verdict} than {baseline} on {metric} ({evidence}, {row.get('runs')} runs).")
        elif verdict == "not resolved":
            seeds = row.get(SEEDS)
            need = f" Seeds per group that would resolve it: {seeds}." if seeds else ""
            lines.append(f"{name} against {baseline} on {metric}: not resolved ({evidence}); these seeds "
                         f"cannot tell the two apart.{need}")
        else:
            lines.append(f"{name}: not compared with {baseline} ({verdict}).")
    return lines


def command(run: Run) -> str:
    """The `nnopt train` line that made the run, from its .hydra/overrides.yaml."""
    overrides, why = read_yaml(run.path / layout.OVERRIDES)
    if not isinstance(overrides, list):
        return f"(unknown: {layout.OVERRIDES} {why or 'is not a list'})"
    return "nnopt train " + " ".join(shlex.quote(str(o)) for o in overrides)


def version_line(run: Run) -> str:
    v = run.summary.get("versions")
    parts = [f"{k} {fmt(v[k])}" for k in sorted(v)] if isinstance(v, dict) else []
    sha = run.summary.get("git_sha")
    parts.append(f"git {fmt(sha)}" if sha else "git commit not recorded")
    return ", ".join(parts) if isinstance(v, dict) else f"versions not recorded; {parts[-1]}"


def build(args: argparse.Namespace, study: Study, title: str) -> Report:
    wkeys = workload.columns(study.shown, study.group_by or ())
    per: dict[str, list[Run]] = {}
    for r in study.shown:
        per.setdefault(workload.label(r, wkeys) or "one workload", []).append(r)
    paths = ", ".join(map(str, args.paths))
    summary = (f"{len(study.shown)} runs under {paths}"
               + (f" ({len(study.runs) - len(study.shown)} more found, not shown)" if len(study.runs) > len(study.shown)
                  else "") + f"; made by nnopt {__version__}.")
    found, skipped = images(args, study)
    keys = study.keys_grouped
    fronts, problems = pareto.find(args.paths, study.runs)
    return Report(
        title=title, summary=summary,
        workloads=[(w, len(rs), sum(r.completed for r in rs)) for w, rs in per.items()],
        table=study.table,
        verdicts=verdicts(study.table, keys, study.metrics[0] if study.metrics else None, args.baseline),
        images=found,
        commands=[(r.label, command(r)) for r in study.shown],
        versions=Counter(version_line(r) for r in study.shown).most_common(),
        fronts=[(f.title(), pareto.table(f)) for f in fronts],
        left_out=[*skipped, *(f"Pareto front: {why}" for why in problems)])


# ---------------------------------------------------------------------------- HTML

CSS = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.2rem .5rem}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.wide{overflow-x:auto}  /* a wide table scrolls inside the page instead of spilling off it */
.green{color:#17701f}.red{color:#b01c1c}.yellow{color:#8a6d00}img{max-width:100%}
pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;font-size:.8rem}.note{color:#555;font-size:.85rem}"""


def _h(s: Any) -> str:
    return html.escape(str(s), quote=True)


def html_table(table: Table) -> str:
    keys = [c.key for c in table.columns]
    numeric = {k: is_numeric_column(table, k) for k in keys}
    styled = {c.key for c in table.columns if c.kind in ("status", "verdict")}
    out = ['<div class="wide"><table>', "<tr>" + "".join(f"<th>{_h(k)}</th>" for k in keys) + "</tr>"]
    for row in table.rows:
        cells = []
        for k in keys:
            text = fmt(row.get(k))
            cls = ["num"] if numeric[k] else []
            if k in styled and text in STATUS_STYLE:
                cls.append(STATUS_STYLE[text])
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{_h(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    out += [f'<p class="note">{_h(n)}.</p>' for n in table.notes]
    return "\n".join(out)


def to_html(rep: Report) -> str:
    body = [f"<h1>{_h(rep.title)}</h1>", f"<p>{_h(rep.summary)}</p>", "<h2>Workloads</h2>", "<ul>"]
    body += [f"<li>{_h(w)}: {n} runs, {done} completed</li>" for w, n, done in rep.workloads]
    body += ["</ul>", "<h2>Results</h2>", html_table(rep.table)]
    for title, front in rep.fronts:
        body += ["<h2>Pareto front</h2>", f"<p>{_h(title)}</p>", html_table(front)]
    if rep.verdicts:
        body += ["<h2>Verdicts against the baseline</h2>", "<ul>"]
        body += [f"<li>{_h(v)}</li>" for v in rep.verdicts]
        body.append("</ul>")
    for im in rep.images:
        data = base64.b64encode(im.png).decode("ascii")
        body += [f"<h2>{_h(im.title)}</h2>", f'<img alt="{_h(im.title)}" src="data:image/png;base64,{data}">',
                 f'<p class="note">{_h(im.caption)}</p>']
    if rep.left_out:
        body += ["<h2>Not shown</h2>", "<ul>"] + [f"<li>{_h(s)}</li>" for s in rep.left_out] + ["</ul>"]
    body += ["<h2>How to reproduce</h2>", "<p>Each run's command (its overrides):</p>",
             "<pre>" + "\n".join(f"{_h(label)}: {_h(cmd)}" for label, cmd in rep.commands) + "</pre>",
             "<p>Versions that ran them:</p>", "<ul>"]
    body += [f"<li>{_h(v)}: {n} runs</li>" for v, n in rep.versions]
    body.append("</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_h(rep.title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------- Markdown


def _md(s: Any) -> str:
    """Text from a run folder in Markdown: HTML escaped (GitHub renders the entities), | kept in cells."""
    return html.escape(str(s), quote=False).replace("|", "\\|")


def md_table(table: Table) -> str:
    keys = [c.key for c in table.columns]
    align = ["---:" if is_numeric_column(table, k) else "---" for k in keys]
    lines = ["| " + " | ".join(_md(k) for k in keys) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md(fmt(row.get(k))) for k in keys) + " |" for row in table.rows]
    return "\n".join(lines) + "\n" + "".join(f"\n{_md(n)}.\n" for n in table.notes)


def to_markdown(rep: Report, image_stem: str) -> tuple[str, dict[str, bytes]]:
    """The Markdown text and the PNG files to write beside it (name -> bytes)."""
    files = {f"{image_stem}-{im.name}.png": im.png for im in rep.images}
    out = [f"# {_md(rep.title)}", "", _md(rep.summary), "", "## Workloads", ""]
    out += [f"- {_md(w)}: {n} runs, {done} completed" for w, n, done in rep.workloads]
    out += ["", "## Results", "", md_table(rep.table)]
    for title, front in rep.fronts:
        out += ["## Pareto front", "", _md(title), "", md_table(front)]
    if rep.verdicts:
        out += ["## Verdicts against the baseline", ""] + [f"- {_md(v)}" for v in rep.verdicts] + [""]
    for (name, _), im in zip(files.items(), rep.images, strict=True):
        out += [f"## {im.title}", "", f"![{im.title}]({name})", "", _md(im.caption), ""]
    if rep.left_out:
        out += ["## Not shown", ""] + [f"- {_md(s)}" for s in rep.left_out] + [""]
    text = "\n".join(f"{label}: {cmd}" for label, cmd in rep.commands)
    fence = "`" * max(3, 1 + max((len(run) for run in _backtick_runs(text)), default=0))
    out += ["## How to reproduce", "", "Each run's command (its overrides):", "", fence, text, fence, "",
            "Versions that ran them:", ""] + [f"- {_md(v)}: {n} runs" for v, n in rep.versions]
    return "\n".join(out) + "\n", files


def _backtick_runs(text: str) -> list[str]:
    return re.findall(r"`+", text)
