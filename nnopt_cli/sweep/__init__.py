"""Hydra sweeps: composing each job once, and the end-of-sweep report.

    compose.py  compose each job structure once, then set values (a large grid starts fast)
    report.py   the sweep callback: one line per job, failures counted, the exit status
    vectorized.py  which jobs train together as one vectorized model (hydra/launcher=vectorized)
"""
