"""`nnopt landscape <run>`: the training loss around a run's solution, on a fixed subset of its data.

    line     loss((1 - a) w0 + a w1) for a in --range: from the run's initial weights (model.init.pt)
             to its final ones (model.pt) (Goodfellow et al. 2015), or from this run's final weights
             to another run's (--to): a barrier between two solutions shows as a bump
    surface  loss(w1 + a d1 + b d2) on a grid, d1 and d2 random directions scaled filter by filter
             to the norms of w1's filters (Li et al. 2018, "filter normalization"; biases and 1-d
             parameters get no component), drawn from --seed's own generator

A run folder is untrusted input: its .hydra/config.yaml is read by the guarded reader every
command uses (untrusted.py: size cap, alias and interpolation budgets, no resolvers; no `_target_`:
only nnopt's own models, activations and datasets by name) and its weights with
torch.load(weights_only=True), each tensor of the dtype the model's own has. Writes landscape.json, line.csv, surface.csv and landscape.png to
--out (default outputs/landscape/<time>/), never into a run folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from nnopt_cli.config.checks import need_int, need_num
from nnopt_cli.errors import NnoptError, report_errors
from nnopt_cli.run import tools as runs
from nnopt_cli.store import layout, outputs
from nnopt_cli.store.checkpoint import safe_load
from nnopt_cli.training.metrics import evaluate
from nnopt_cli.training.progress import Count

State = dict[str, torch.Tensor]


def load_weights(path: Path) -> State:

    sd = safe_load(path, "weights")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise NnoptError(f"{path} is not a state_dict of tensors")
    return sd


def blend(a: State, b: State, alpha: float) -> State:
    """(1 - alpha) a + alpha b for float tensors (exactly a at 0, b at 1); counters from b."""
    return {k: (1 - alpha) * a[k] + alpha * b[k] if b[k].is_floating_point() else b[k] for k in b}


def direction(model: nn.Module, center: State, generator: torch.Generator) -> State:
    """A filter-normalized random direction: each filter (row of a weight, output channel of a
    kernel) gets the norm of the same filter of `center`; 1-d parameters and buffers get zero."""
    params = {name for name, _ in model.named_parameters()}
    out: State = {}
    for k, w in center.items():
        if k in params and w.dim() >= 2:
            d = torch.randn(w.shape, generator=generator, dtype=torch.float64)
            scale = w.double().flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1).clamp_min(1e-12)
            out[k] = (d * scale.view(-1, *[1] * (w.dim() - 1))).to(w.dtype)
        else:
            out[k] = torch.zeros_like(w) if w.is_floating_point() else w
    return out


def shift(center: State, d1: State, d2: State, a: float, b: float) -> State:
    return {k: center[k] + a * d1[k] + b * d2[k] if center[k].is_floating_point() else center[k] for k in center}


def loss_at(model: nn.Module, state: State, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:

    model.load_state_dict(state)
    return evaluate(model, x, y, batch_size)


def subset(data, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random subset of the training split (own generator)."""
    idx = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed))[:samples]
    return data.train_x[idx], data.train_y[idx]


def build(run: Path):
    """(model, data) of a run folder, read as untrusted."""
    cfg = runs.run_config(run)
    data = runs.load_data(cfg["dataset"])
    return runs.make_model(cfg, data.input_shape, data.num_classes), data


def check_same_shapes(a: State, b: State, what: str) -> None:
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise NnoptError(f"{what}: the two weight sets are of different models (keys or shapes differ)")


def check_dtypes(model: nn.Module, state: State, what: str) -> None:
    """Each tensor has the dtype of the model's own: an integer tensor where the model has floats
    would be held fixed by blend() and shift(), drawing a flat line that reads as a result."""
    own = model.state_dict()
    for k, v in state.items():
        if k in own and v.dtype != own[k].dtype:
            raise NnoptError(f"{what}: {k} is {str(v.dtype).removeprefix('torch.')}, the model's is "
                             f"{str(own[k].dtype).removeprefix('torch.')}; refused to interpolate weights of another type")


def landscape(args: argparse.Namespace) -> dict:

    need_int("--points", args.points, 2)
    need_int("--grid", args.grid, 0)
    need_int("--samples", args.samples, 1)
    need_num("--span", args.span, gt=0)
    lo, hi = args.range
    need_num("--range", hi, gt=lo)
    run = Path(args.run)
    model, data = build(run)
    final = load_weights(run / layout.MODEL)
    check_dtypes(model, final, str(run / layout.MODEL))
    if args.to is not None:
        runs.run_config(Path(args.to))  # the other folder passes the same guarded reader
        start, end = final, load_weights(Path(args.to) / layout.MODEL)
        check_same_shapes(start, end, f"--to {args.to}")
        check_dtypes(model, end, f"--to {args.to}")
        line_from, line_to = str(run / layout.MODEL), str(Path(args.to) / layout.MODEL)
    else:
        if not (run / layout.INIT_MODEL).is_file():
            raise NnoptError(f"{run} has no {layout.INIT_MODEL} (runs of older nnopt versions did not save their "
                             "initial weights); compare two solutions with --to <other run> instead")
        start, end = load_weights(run / layout.INIT_MODEL), final
        line_from, line_to = str(run / layout.INIT_MODEL), str(run / layout.MODEL)
        check_same_shapes(start, end, str(run))
        check_dtypes(model, start, str(run / layout.INIT_MODEL))
    try:
        model.load_state_dict(final)
    except RuntimeError as e:
        raise NnoptError(f"{run}/model.pt does not fit the model of its config ({str(e).splitlines()[0][:150]})") from None
    out = runs.output_dir("landscape", args.out)
    x, y = subset(data, args.samples, args.seed)
    cfg = runs.run_config(run)
    bs = cfg["eval_batch_size"]
    steps = args.points - 1
    alphas = sorted({lo + (hi - lo) * i / steps for i in range(args.points)} | {0.0, 1.0})
    count = Count(len(alphas) + args.grid ** 2, "nnopt landscape", "points")  # stderr: bar, else tenths

    def at(state: State) -> tuple[float, float]:
        loss_acc = loss_at(model, state, x, y, bs)
        count.advance()
        return loss_acc

    with count:
        line = [{"alpha": a, **dict(zip(("loss", "acc"), at(blend(start, end, a)), strict=True))} for a in alphas]
        if args.grid:
            g = torch.Generator().manual_seed(args.seed)
            d1, d2 = direction(model, final, g), direction(model, final, g)
            coords = [-args.span + 2 * args.span * i / max(args.grid - 1, 1) for i in range(args.grid)]
            grid = [[at(shift(final, d1, d2, a, b))[0] for a in coords] for b in coords]
    doc = {"run": str(run), "line": {"from": line_from, "to": line_to, "rows": line},
           "workload": {"dataset": cfg["dataset"].get("name"), "model": cfg["model"].get("name")},
           "samples": len(x), "subset": "training split", "seed": args.seed}
    if args.grid:
        doc["surface"] = {"center": str(run / layout.MODEL), "coords": coords, "loss": grid,
                          "normalization": "filter (Li et al. 2018)"}
    write(out, doc)
    print(f"nnopt landscape: line {line_from} -> {line_to}: loss {line[0]['loss']:.4g} at alpha={alphas[0]:g}, "
          f"min {min(r['loss'] for r in line):.4g}, {line[-1]['loss']:.4g} at alpha={alphas[-1]:g}")
    print(f"wrote {out}/landscape.png, landscape.json, line.csv" + (", surface.csv" if args.grid else ""))
    return doc


def write(out: Path, doc: dict) -> None:
    """landscape.json, line.csv (surface.csv) and landscape.png, all or none."""
    files = {"landscape.json": json.dumps(doc, indent=1) + "\n",
             "line.csv": outputs.csv_text([["alpha", "loss", "acc"],
                                           *([r["alpha"], r["loss"], r["acc"]] for r in doc["line"]["rows"])])}
    if "surface" in doc:
        s = doc["surface"]
        files["surface.csv"] = outputs.csv_text(
            [["a", "b", "loss"], *([a, b, s["loss"][j][i]] for j, b in enumerate(s["coords"])
                                   for i, a in enumerate(s["coords"]))])
    files["landscape.png"] = outputs.figure_png(figure(doc))
    outputs.write_files(out, files)


def endpoint(path: str) -> str:
    """'outputs/2026-12-07/10-00-00 final weights (model.pt)': which run, and which of its weights."""
    p = Path(path)
    folder = str(p.parent) if len(str(p.parent)) <= 60 else ".../" + "/".join(p.parent.parts[-3:])
    which = "initial" if p.name == layout.INIT_MODEL else "final"
    return f"{folder} {which} weights ({p.name})"


def figure(doc: dict):
    from matplotlib.figure import Figure

    from nnopt_cli.compare import figures

    surf = doc.get("surface")
    fig = Figure(figsize=(12 if surf else 7, 5.2), layout="constrained")
    axes = fig.subplots(1, 2 if surf else 1, squeeze=False)[0]
    rows = doc["line"]["rows"]
    ax = axes[0]
    ax.plot([r["alpha"] for r in rows], [r["loss"] for r in rows], marker="o", markersize=3)
    for a in (0.0, 1.0):
        ax.axvline(a, color="0.6", linestyle=":", linewidth=1)
    ax.set_xlabel("alpha (0 = from, 1 = to)")
    ax.set_ylabel("training loss (subset)")
    ax.set_title(figures.plain(f"alpha=0: {endpoint(doc['line']['from'])}\nalpha=1: {endpoint(doc['line']['to'])}"),
                 fontsize="small")
    ax.grid(alpha=0.3)
    if surf:
        import numpy as np

        ax = axes[1]
        c, z = surf["coords"], np.log10(np.clip(np.array(surf["loss"], dtype=float), 1e-12, None))
        cs = ax.contourf(c, c, z, levels=20, cmap="viridis")
        ax.contour(c, c, z, levels=20, colors="k", linewidths=0.3)
        fig.colorbar(cs, ax=ax, label="log10 training loss")
        ax.plot([0], [0], marker="*", color="w", markersize=10)
        ax.set_xlabel("direction 1 (filter-normalized)")
        ax.set_ylabel("direction 2")
        ax.set_title(figures.plain(f"2-D slice around {endpoint(doc['surface']['center'])}"), fontsize="small")
    w = doc.get("workload") or {}
    what = " ".join(f"{k}={w[k]}" for k in ("dataset", "model") if w.get(k)) or "workload not recorded"
    fig.suptitle(figures.plain(f"loss landscape | {what} | {doc.get('samples', '?')} training samples"),
                 fontsize="medium")
    return fig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnopt landscape", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                epilog="example: nnopt landscape outputs/2026-11-23/10-00-00 --grid 31",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run folder of nnopt train (model.pt, model.init.pt, .hydra/)")
    p.add_argument("--to", type=Path, help="another run folder: the line goes from this run's final weights to its")
    p.add_argument("--range", type=float, nargs=2, default=(-0.5, 1.5), metavar=("LO", "HI"),
                   help="alpha range of the line (default -0.5 1.5; 0 and 1 are always included)")
    p.add_argument("--points", type=int, default=21, help="points on the line (default 21)")
    p.add_argument("--grid", type=int, default=21, help="points per side of the 2-D slice; 0 = no slice (default 21)")
    p.add_argument("--span", type=float, default=1.0, help="the slice covers [-span, span]^2 (default 1)")
    p.add_argument("--samples", type=int, default=2048, help="training samples the loss is taken on (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and the directions (default 0)")
    p.add_argument("--out", type=Path, help="output folder (default outputs/landscape/<time>)")
    return p


def run(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    report_errors("landscape", landscape, args)
