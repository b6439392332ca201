"""The training loop and what it calls each step: the trainer, the loss, regularizers, gradient
clipping, mixed precision, metrics, early stopping, observers, the device, DDP and Ctrl-C.

    checks.py    precision, grad_clip, early_stopping, regularizer and loss values, checked without torch
    trainer.py   Trainer: the step (forward -> loss -> backward -> clip -> step -> schedule) and the epoch
    fit.py       fit(): epochs of train -> validate -> check, for the runner, fine-tunes and lr-find
    weights.py   which weights are evaluated and saved (raw, schedule-free eval point, EMA/SWA)
    metrics.py   per-step sums and evaluate()
    observers.py the hooks loggers and diagnostics attach to
    device.py, launch.py  threads, seeds and torchrun's environment, readable before torch is imported
    vectorized.py  the epoch of many runs (seeds, LRs) trained as one stacked model (torch.func)
    lockstep.py  runs whose epochs a vectorized group trains: each run in a thread, taking turns
"""
