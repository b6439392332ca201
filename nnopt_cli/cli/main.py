"""The `nnopt` command: dispatches to subcommands (train, tune, compare, ls, export, ...)."""

from __future__ import annotations

import sys
from importlib import import_module

from nnopt_cli import __version__

USAGE = """usage: nnopt <command> [args]

commands:
  train     train a model with the techniques chosen by config (Hydra overrides)
            nnopt train optimizer=adam scheduler=exp
            nnopt train --multirun optimizer=sgd,momentum,adam seed=0,1,2
            nnopt train logger=tensorboard   live TensorBoard event files in the run folder
            torchrun --standalone --nproc_per_node=4 -m nnopt_cli train   DDP, one GPU each
            nnopt train --help        config groups, their options and Hydra flags
  tune      hyper-parameter search with Optuna (ask/tell, pruning, a journal file per study)
            nnopt tune hparams_search=mnist_optuna tune.n_trials=12 epochs=3
            nnopt tune --help         samplers, pruners, continuing and sharing a study
  ls        recent runs, newest first: time, status, name, tags, test/acc (outputs/latest: the last run)
            nnopt ls                  nnopt ls outputs/multirun -n 0
  compare   tables, seed averages and plots over run folders
            nnopt compare outputs/ --group-by optimizer --sort test/acc
            nnopt compare outputs/ --plot curves.png --format csv
            nnopt compare --help      sorting, filtering, formats and plot kinds
  report    a study as one shareable HTML (or Markdown) file: table, verdicts, figures, commands
            nnopt report outputs/ --group-by optimizer --baseline adam -o report.html
  export    write run folders into another tool's format
            nnopt export tensorboard outputs/multirun/...    then: tensorboard --logdir ...
  lr-find   LR range test: ramp the LR, plot the loss, suggest optimizer.lr (Hydra overrides)
            nnopt lr-find optimizer=sgd model=cnn
  landscape loss along the line init -> final weights (or to another run) and a 2-D slice
            nnopt landscape outputs/2026-11-23/10-00-00 --to outputs/2026-11-23/11-00-00
  fuse      a model soup: average the weights of runs fine-tuned from one parent, beside their ensemble
            nnopt fuse outputs/multirun/.../* --method greedy --ensemble -o outputs/soup
  tune-lr   tune each optimizer's LR on a grid, rerun the best over seeds, beside the default LR
            nnopt tune-lr dataset=mnist1d epochs=20 --optimizers sgd,adam --lrs 8 --seeds 3
            nnopt tune-lr --help      grid, seeds, metric and study folder
  completion  a bash script completing commands and, after train, config groups, options and keys
            eval "$(nnopt completion bash)"    (add the line to ~/.bashrc to keep it)

options:
  -h, --help     show this message
  --version      print nnopt's version
"""

# command -> the module whose run(args) carries it out, imported only when used (fast start-up)
COMMANDS = {
    "train": "nnopt_cli.cli.train",
    "tune": "nnopt_cli.cli.tune",
    "compare": "nnopt_cli.cli.compare",
    "report": "nnopt_cli.cli.report",
    "ls": "nnopt_cli.cli.ls",
    "export": "nnopt_cli.cli.export",
    "lr-find": "nnopt_cli.cli.lr_find",
    "landscape": "nnopt_cli.cli.landscape",
    "tune-lr": "nnopt_cli.cli.tune_lr",
    "fuse": "nnopt_cli.cli.fuse",
    "completion": "nnopt_cli.cli.completion",
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        raise SystemExit(0 if args else 2)
    if args[0] == "--version":
        print(f"nnopt {__version__}")
        return
    command, rest = args[0], args[1:]
    if command == "completion" or (command == "train" and any(a in ("-sc", "--shell-completion") for a in rest)):
        completion = import_module(COMMANDS["completion"])  # it needs the command list; it may not import this
        if command == "completion":
            completion.run(rest, list(COMMANDS))
            return
        if completion.hydra_flag(rest, list(COMMANDS)):
            return
    if command in COMMANDS:
        import_module(COMMANDS[command]).run(rest)
        return
    from difflib import get_close_matches

    close = get_close_matches(command, COMMANDS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    print(f"nnopt: error: unknown command {command!r}; {hint}choose one of: {', '.join(COMMANDS)} (see nnopt --help)",
          file=sys.stderr)
    raise SystemExit(2)
