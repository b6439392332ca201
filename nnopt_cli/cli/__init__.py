"""The `nnopt` commands, one module each; `main.py` dispatches to them (imported only when used).

    train.py      nnopt train      one run or a Hydra sweep of runs
    tune.py       nnopt tune       Optuna search over a preset's space
    tune_lr.py    nnopt tune-lr    each optimizer's LR on a grid, the best rerun over seeds
    compare.py    nnopt compare    tables, statistics and plots over run folders
    export.py     nnopt export     run folders into another tool's format
    lr_find.py    nnopt lr-find    the LR range test
    landscape.py  nnopt landscape  loss along a line between two weight sets, and a 2-D slice

No command imports another: what two commands share lives in a layer below.
"""
