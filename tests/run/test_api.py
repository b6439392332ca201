"""The Python API, from a plain Python process: nnopt_cli.train runs `nnopt train` and returns the
summary; nnopt_cli.load_run rebuilds the trained (and a stage's) model from the folder alone, and
the model reproduces the summary's test accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

SCRIPT = textwrap.dedent("""
    import json, sys
    import nnopt_cli
    assert "torch" not in sys.modules  # importing the package stays cheap

    import torch
    from nnopt_cli.data import load_splits
    from nnopt_cli.errors import NnoptError

    before = torch.get_num_threads(), torch.random.get_rng_state()
    summary = nnopt_cli.train(["dataset=synthetic", "dataset.n_train=256", "dataset.n_test=128",
                               "dataset.val_size=32", "device=cpu", "threads=1", "epochs=2",
                               "batch_size.size=32", "post=[prune]", "post.prune.sparsity=0.5"], quiet=True)
    assert torch.get_num_threads() == before[0] and torch.equal(torch.random.get_rng_state(), before[1])
    run = nnopt_cli.load_run(summary["run_dir"])
    data = load_splits(run.config["dataset"])
    with torch.no_grad():
        acc = (run.model(data.test_x).argmax(1) == data.test_y).float().mean().item()
        pruned = nnopt_cli.load_run(summary["run_dir"], stage="prune").model
        pruned_acc = (pruned(data.test_x).argmax(1) == data.test_y).float().mean().item()
    errors = {}
    for what, call in {"refused": lambda: nnopt_cli.train(["epochs=0"], quiet=True),
                       "no_stage": lambda: nnopt_cli.load_run(summary["run_dir"], stage="quantize"),
                       "not_a_run": lambda: nnopt_cli.load_run("nowhere")}.items():
        try:
            call()
        except NnoptError as e:
            errors[what] = str(e)
    print(json.dumps({"summary": summary, "acc": acc, "pruned_acc": pruned_acc, "errors": errors,
                      "training": run.model.training}))
""")


@pytest.mark.slow
def test_train_and_load_run_from_a_plain_python_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    summary = got["summary"]
    assert summary["status"] == "completed" and summary["run_dir"].startswith(str(tmp_path / "outputs"))
    assert got["acc"] == summary["test/acc"]  # the loaded model is the trained one, to the last sample
    stage = summary["stages"][0]
    assert got["pruned_acc"] == stage["after"]["test/acc"] and stage["file"] == "model.pruned.pt"
    assert got["training"] is False
    assert got["errors"]["refused"] == "train: invalid config: epochs=0: an integer in [1, 1000000]"
    assert "no stage that saved model.quantized.pt (stage files: model.pruned.pt" in got["errors"]["no_stage"]
    assert "nowhere" in got["errors"]["not_a_run"]
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.parent.name != "latest"]  # latest: a link to it
    assert len(runs) == 1  # the refused config left no folder
