"""Reading run folders and deciding between them, for `nnopt compare` and `nnopt report` (cli/).

    pipeline.py  the options and steps both commands share: discover -> filter -> table -> decide
    discover.py  read each run folder tolerantly (config, metrics, summary); files.py the readers
    table.py     filter (--where), the differing config keys, metrics, --group-by mean ± std
    decide.py    --stats IQM [CI], --target time to target, --baseline P(better) and p-values
    stats.py     the statistics themselves (bootstrap, Mann-Whitney, permutation, profiles)
    evals.py     mid-epoch evaluations and targets
    render.py    table (fitted to the terminal) / csv / markdown / json
    report.py    a study as one HTML or Markdown file (`nnopt report`)
    pareto.py    the Pareto front a multi-objective `nnopt tune` study left (pareto.json)
    plots.py, decide_plots.py, diag_plots.py   the figures (matplotlib, imported when asked)
    figures.py   what every figure shares: its subtitle, line styles, legend placement, byte axes

Never imports torch or the training code, and never writes inside a run folder.
"""
