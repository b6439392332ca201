"""What updates the weights: optimizers and their step protocol, LR schedules, parameter groups,
batch-size policies and weight averaging (EMA / SWA).

    optimizers.py    conf/optimizer: build the class, bind its arguments, the step protocol
    schedulers.py    conf/scheduler: torch's schedulers and nnopt's own (warmup-cosine, WSD, ...)
    param_groups.py  route weights, biases and norms to their own groups (Muon, no decay on biases)
    batch_size.py    conf/batch_size: fixed, doubling, ramp, random
    averaging.py     conf/averaging: EMA and SWA of the weights
    checks.py        the optimizer, scheduler and averaging values, checked without torch
"""
