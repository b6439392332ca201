"""One run, start to end: check its config, set up its folder, train, post-train, summarize.

    validate.py  every check a config passes before any folder or training
    structure.py the checks of those that need no torch (run first: config errors answer at once)
    recipe.py    train(): the recipe of one run (data, model, trainer, stages, summary)
    job.py       the job's folder under Hydra: fresh, resumed or skipped; threads; Ctrl-C
    transfer.py  init_from: start from another run's weights (frozen layers, knowledge transfer)
    continuation.py  continue_from: a new run from a completed run's final checkpoint, to N epochs
    tools.py     what lr-find and landscape share: a config composed like `nnopt train` does
"""
