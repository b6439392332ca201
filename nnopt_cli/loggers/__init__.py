"""Loggers: observers that mirror a run, live, into a viewer users already have (`logger=<name>`).

The run folder stays the source of truth (metrics.jsonl, summary.json); a logger only copies
what the loop hands its observer hooks. `nnopt export <logger> <dirs>` writes the same files
afterwards from existing run folders.
"""
