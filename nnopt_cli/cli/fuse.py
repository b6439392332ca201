"""`nnopt fuse RUN... -o OUT`: a model soup, the average of the weights of runs fine-tuned from one
parent (Wortsman et al. 2022), measured beside the best single run and, with --ensemble, the
ensemble of the same runs.

    uniform  the mean of all the runs' weights
    greedy   runs sorted by validation accuracy; each joins if the soup's val/acc does not drop

OUT becomes a run-like folder (.hydra/config.yaml, model.pt, summary.json) that `nnopt compare`,
`nnopt ls` and `nnopt_cli.load_run` read. The run folders are read as untrusted input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnopt_cli.errors import NnoptError, report_errors
from nnopt_cli.post import soup as soups
from nnopt_cli.run import tools as runs


def fuse(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NnoptError(f"-o {str(out)!r} exists and is not an empty folder; choose a new one")
    if args.method not in soups.METHODS:
        raise NnoptError(f"--method {args.method!r}: one of {', '.join(soups.METHODS)}")
    members = soups.load_members([Path(r) for r in args.runs])
    first = runs.run_config(members[0].run)  # the data as nnopt's own loader reads it, from no folder's location
    data = runs.load_data(first["dataset"])
    if (tuple(data.input_shape), data.num_classes) != (members[0].shape, members[0].num_classes):
        raise NnoptError(f"{members[0].run}: its model was built for inputs {list(members[0].shape)} and "
                         f"{members[0].num_classes} classes, the dataset has {list(data.input_shape)} and {data.num_classes}")
    bs = first["eval_batch_size"]
    soup = soups.make_soup(members, args.method, data, bs)
    ensemble = soups.ensemble_scores(members, data, bs) if args.ensemble else None
    summary = soups.summary_of(soup, members, ensemble)
    runs.output_dir("fuse", out)  # never inside a run folder
    soups.write_folder(out, soup, summary)
    report(soup, members, summary)
    print(f"wrote {out} (model.pt, summary.json, .hydra/config.yaml)")
    return summary


def report(soup: soups.Soup, members: list[soups.Member], summary: dict) -> None:
    in_soup = set(summary["fuse"]["soup"])
    width = max(len(str(m.run)) for m in members)
    print(f"{'run':<{width}}  val/acc  test/acc  in soup")
    for m in members:
        print(f"{str(m.run):<{width}}  {m.scores['val/acc']:.4f}   {m.scores['test/acc']:.4f}    "
              f"{'yes' if str(m.run) in in_soup else 'no'}")
    rows = [(f"{soup.method} soup of {len(soup.ingredients)} of {len(members)} runs", soup.scores)]
    if "ensemble" in summary["fuse"]:
        rows.append((f"ensemble of {len(members)} runs (mean softmax)", summary["fuse"]["ensemble"]))
    best = summary["fuse"]["best_single"]
    rows.append((f"best single run by val/acc ({best['run']})", best))
    for label, s in rows:
        print(f"{label}: val/acc {s['val/acc']:.4f} test/acc {s['test/acc']:.4f} ({s['test/errors']} test errors)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnopt fuse", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                epilog="example: nnopt fuse outputs/multirun/2026-11-23/10-00-00/* "
                                       "--method greedy --ensemble -o outputs/soup",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders of nnopt train (one model config, one parent)")
    p.add_argument("--method", default="greedy", help="uniform | greedy (default greedy)")
    p.add_argument("--ensemble", action="store_true",
                   help="also measure the ensemble of the runs (mean of their softmaxes; one forward pass per run)")
    p.add_argument("-o", "--out", required=True, type=Path, help="the soup's folder (new or empty)")
    return p


def run(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    report_errors("fuse", fuse, args)
