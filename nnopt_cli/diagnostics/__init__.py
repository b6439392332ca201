"""Explain why a run trained the way it did: per-layer diagnostics, sharpness, LR range test, loss landscapes.

    layers.py      LayerDiagnostics, the observer behind `diagnostics=basic|full` (diagnostics.jsonl)
    stats.py       the per-layer numbers: norms, update ratios, activation mean/std, dead/saturated units
    sharpness.py   top Hessian eigenvalue (power iteration on Hessian-vector products), Hutchinson trace
    lr_find.py     `nnopt lr-find`: the LR range test (Smith 2017; fastai's lr_find)
    landscape.py   `nnopt landscape`: loss along a line between two weight sets, and a 2-D slice (Li et al. 2018)

Nothing here changes training: every random draw uses its own torch.Generator, the model's mode
is restored and forward hooks are removed after each probe.
"""
