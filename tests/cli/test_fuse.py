"""`nnopt fuse` as users run it: the soup's folder, its report, and one-line refusals."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from nnopt_cli import load_run
from nnopt_cli.run.recipe import RunContext, train
from tests.conftest import compose_cfg, run_cli


def trained(path, *overrides):
    cfg = compose_cfg("epochs=1", "dataset.noise=1.0", *overrides)
    train(cfg, RunContext(run_dir=path))
    (path / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), path / ".hydra" / "config.yaml")
    return path


@pytest.mark.slow
def test_fuse_writes_a_folder_compare_and_load_run_read(tmp_path):
    parent = trained(tmp_path / "runs" / "parent")
    kids = [trained(tmp_path / "runs" / f"kid{i}", f"init_from={parent}", f"seed={i}") for i in (1, 2)]
    out = tmp_path / "soups" / "soup"
    r = run_cli("fuse", *map(str, kids), "--method", "uniform", "--ensemble", "-o", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["fuse"]["soup"] == [str(k) for k in kids]
    lines = r.stdout.splitlines()
    assert f"uniform soup of 2 of 2 runs: val/acc {summary['val/acc']:.4f} test/acc {summary['test/acc']:.4f}" in r.stdout
    assert any(line.startswith("ensemble of 2 runs (mean softmax): val/acc") for line in lines)
    best = summary["fuse"]["best_single"]
    assert best["test/acc"] == json.loads((tmp_path / "runs" / best["run"].rsplit("/", 1)[1] / "summary.json")
                                          .read_text())["test/acc"]
    assert load_run(out).summary["test/acc"] == summary["test/acc"]
    r = run_cli("compare", str(tmp_path), "--format", "csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    soup_row = next(line for line in r.stdout.splitlines() if "soups/soup" in line)
    assert "uniform" in soup_row and f"{summary['test/acc']:.4g}"[:5] in soup_row
    # the same folder again: refused, nothing overwritten
    before = (out / "model.pt").read_bytes()
    r = run_cli("fuse", *map(str, kids), "-o", str(out), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not an empty folder" in r.stderr
    assert (out / "model.pt").read_bytes() == before


@pytest.mark.slow
def test_runs_of_different_parents_are_refused_in_one_line_before_any_folder(tmp_path):
    a, b = trained(tmp_path / "a", "seed=1"), trained(tmp_path / "b")
    c = trained(tmp_path / "c", f"init_from={a}")
    r = run_cli("fuse", str(a), str(c), "-o", str(tmp_path / "soup"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"nnopt fuse: error: cannot fuse {a} and {c}: they start from different weights "
                                f"(init_from/continue_from: None vs {a}); a soup averages runs fine-tuned from one parent")
    assert not (tmp_path / "soup").exists()
    r = run_cli("fuse", str(a), str(b), "--method", "best", "-o", str(tmp_path / "soup"), cwd=tmp_path)
    assert r.stderr.strip() == "nnopt fuse: error: --method 'best': one of uniform, greedy" and r.returncode == 2
