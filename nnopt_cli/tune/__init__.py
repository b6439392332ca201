"""`nnopt tune`: hyper-parameter search on Optuna (>= 4) through its ask/tell API, around nnopt's
own config composition and runner: no Hydra sweeper, no subprocess per trial.

    space.py     the preset (conf/hparams_search/<name>.yaml) -> distributions and overrides
    objectives.py  what a study optimizes: one summary.json number or several (a Pareto front)
    samplers.py  samplers and pruners by name
    pruning.py   the observer that reports each epoch to the trial and stops a pruned run
    study.py     the study folder: journal file, locks, dead-trial recovery, best.yaml
    pareto.py    a multi-objective study's front: pareto.json and pareto.png
    lr_jobs.py   the LR grid jobs of `nnopt tune-lr` and their study file

The command line and the trial loop are in cli/tune.py.
"""
