"""`nnopt report`: a study as one file to share, HTML (self-contained) or Markdown.

The table is `nnopt compare`'s for the same options (compare/pipeline.py), with --stats when
grouped; compare/report.py assembles the rest. Reads run folders only, never writes inside one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nnopt_cli.compare import pipeline
from nnopt_cli.compare import report as assemble
from nnopt_cli.compare.table import CompareError
from nnopt_cli.errors import report_errors

EXAMPLES = """examples:
  nnopt report outputs/ -o report.html
  nnopt report outputs/multirun/... --group-by optimizer --baseline adam --metric test/acc -o study.html
  nnopt report outputs/ --group-by optimizer --target val/acc=0.97 -o study.md   figures beside it

The report holds the workloads, the table (with --group-by: IQM and 95% CIs, as --stats), the
verdicts against --baseline in words, every figure the runs allow (curves, time to target, LR
sensitivity, performance profile, diagnostics, compression tradeoffs), each run's command and the
versions that ran it. An .html report is one file (figures embedded, no network); an .md report
writes its figures beside it as <name>-<figure>.png.
"""

SUFFIXES = (".html", ".htm", ".md")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnopt report", description="A study as one shareable file: the "
                                "comparison of `nnopt compare` with its figures, commands and versions.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pipeline.add_options(p)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.html|FILE.md",
                   help="the report: .html (self-contained) or .md (figures written beside it)")
    p.add_argument("--title", default="nnopt study", help="the report's heading (default: nnopt study)")
    return p


def write(path: Path, data: bytes) -> None:
    """Whole or not at all: a report interrupted mid-write never replaces a good one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def report(args: argparse.Namespace) -> None:
    out: Path = args.output
    if out.suffix.lower() not in SUFFIXES:
        raise CompareError(f"-o {str(out)!r}: a report is written as HTML or Markdown; name the file "
                           "*.html or *.md")
    args.stats = args.stats or bool(args.group_by)  # a study's groups are read with their IQM and CI
    args.plot, args.plot_kind = None, "curves"  # the figures are chosen by compare/report.py

    def check_output(runs, shown, metrics) -> None:
        owner = pipeline.inside_run(out, runs)
        if owner is not None:
            raise CompareError(f"-o {str(out)!r} is inside run folder {owner.label}; a report never writes "
                               "into run folders, choose another path")

    study = pipeline.prepare(args, prog="nnopt report", check_output=check_output)
    rep = assemble.build(args, study, args.title)
    if out.suffix.lower() == ".md":
        text, files = assemble.to_markdown(rep, out.stem)
        for name, data in files.items():
            write(out.parent / name, data)
        write(out, text.encode())
    else:
        write(out, assemble.to_html(rep).encode())
    print(f"nnopt report: wrote {out} ({len(rep.images)} figures)", file=sys.stderr)


def run(argv: list[str]) -> None:
    """Entry point for `nnopt report ...`: errors are one line and a non-zero exit."""
    args = parser().parse_args(argv)
    report_errors("report", report, args)
