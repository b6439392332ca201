"""The run folder on disk: what a run writes and how it is read back.

    layout.py      the file names a run folder holds (one place, so readers and writers agree)
    folder.py      RunDir: atomic writes, checksums, metrics.jsonl, summary.json, statuses
    checkpoint.py  the resumable checkpoint: its format, fingerprint and safe loading
    lock.py        one process per run folder (an O_EXCL lock file that names its owner)
    untrusted.py   reading a folder that may come from someone else: size caps, safe YAML, no code
    outputs.py     files commands write for the user (plots, CSV): whole or not at all, one line on a full disk
    targets.py     the allow-list of `_target_`s a config read from a folder may name
"""
