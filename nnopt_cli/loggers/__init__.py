"""Loggers: observers that mirror a run, live, into a viewer users already have (`logger=<name>`,
several at once as `logger=[tensorboard,csv]`, each under logger.<name>).

    tensorboard.py   event files in the run folder
    csv.py           metrics.csv in the run folder (Lightning's CSVLogger convention)
    mlflow.py        an MLflow tracking store (optional extra)
    wandb.py         an offline Weights & Biases run in the run folder (optional extra)

The run folder stays the source of truth (metrics.jsonl, summary.json); a logger only copies
what the loop hands its observer hooks. `nnopt export <logger> <dirs>` writes the same files
afterwards from existing run folders.
"""
