"""The `nnopt` command: dispatches to subcommands (train, compare)."""

from __future__ import annotations

import sys

from nnopt_cli import __version__

USAGE = """usage: nnopt <command> [args]

commands:
  train     train a model with the techniques chosen by config (Hydra overrides)
            nnopt train optimizer=adam scheduler=exp
            nnopt train --multirun optimizer=sgd,momentum,adam seed=0,1,2
            nnopt train --multirun hparams_search=mnist_optuna     Optuna search
            torchrun --standalone --nproc_per_node=4 -m nnopt_cli train   DDP, one GPU each
            nnopt train --help        config groups, their options and Hydra flags
  compare   tables, seed averages and plots over run folders
            nnopt compare outputs/ --group-by optimizer --sort test/acc
            nnopt compare outputs/ --plot curves.png --format csv
            nnopt compare --help      sorting, filtering, formats and plot kinds
  tune-lr   tune each optimizer's LR on a grid, rerun the best over seeds, beside the default LR
            nnopt tune-lr dataset=mnist1d epochs=20 --optimizers sgd,adam --lrs 8 --seeds 3
            nnopt tune-lr --help      grid, seeds, metric and study folder

options:
  -h, --help     show this message
  --version      print nnopt's version
"""

COMMANDS = ("train", "compare", "tune-lr")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        raise SystemExit(0 if args else 2)
    if args[0] == "--version":
        print(f"nnopt {__version__}")
        return
    command, rest = args[0], args[1:]
    if command == "train":
        from nnopt_cli.train_app import run

        run(rest)
        return
    if command == "compare":
        from nnopt_cli.compare import run as compare

        compare(rest)
        return
    if command == "tune-lr":
        from nnopt_cli.tune_lr import main as tune_lr

        tune_lr(rest)
        return
    print(f"nnopt: error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)} (see nnopt --help)",
          file=sys.stderr)
    raise SystemExit(2)
