"""The post-training stage runner: order, chaining, before/after accounting, failures, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from nnopt_cli.data import load_splits
from nnopt_cli.errors import ConfigError
from nnopt_cli.post import StageDiverged, StageFailed, quantize, stage_names
from nnopt_cli.post.load import load_stage_model
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store.folder import read_metrics
from tests.conftest import TINY, compose_cfg, run_cli

FAST = ["post.measure.latency_repeats=2", "post.measure.latency_warmup=0", "post.measure.latency_batch_sizes=[1,8]"]


def test_default_has_no_stages_and_lists_keep_the_order_given():
    assert stage_names(compose_cfg()) == []
    assert stage_names(compose_cfg("post=prune")) == ["prune"]
    assert stage_names(compose_cfg("post=[prune,quantize]")) == ["prune", "quantize"]
    assert stage_names(compose_cfg("post=[distill,prune,quantize]")) == ["distill", "prune", "quantize"]
    assert stage_names(compose_cfg("post=[prune,distill]")) == ["prune", "distill"]


@pytest.mark.parametrize("overrides,key", [
    (["post=prune", "post.prune.sparsity=1.0"], "post.prune.sparsity"),
    (["post=prune", "post.prune.sparsity=-0.1"], "post.prune.sparsity"),
    (["post=prune", "post.prune.method=random"], "post.prune.method"),
    (["post=prune", "post.prune.rounds=0"], "post.prune.rounds"),
    (["post=prune", "post.prune.norm=0"], "post.prune.norm"),
    (["post=[quantize,prune]"], "post"),
    (["post=prune", "post.measure.latency_batch_sizes=[]"], "post.measure.latency_batch_sizes"),
])
def test_bad_stage_settings_fail_before_training(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*overrides))
    assert err.value.key == key and "\n" not in str(err.value)


def test_prune_then_quantize_chain_records_before_and_after(tmp_path):
    cfg = compose_cfg("post=[prune,quantize]", "model.hidden=[64]", "post.prune.sparsity=0.8", "post.prune.rounds=2",
                      *FAST)
    summary = train(cfg, RunContext(run_dir=tmp_path))
    assert summary["status"] == "completed"
    prune, quant = summary["stages"]
    assert [prune["name"], quant["name"]] == ["prune", "quantize"]
    assert prune["status"] == quant["status"] == "completed"
    assert prune["before"]["test/acc"] == pytest.approx(summary["test/acc"])
    assert prune["before"]["size_bytes"] == (tmp_path / "model.pt").stat().st_size
    # the chain: quantize starts from what prune produced
    same = {k: v for k, v in prune["after"].items() if k != "latency_ms"}  # latency is re-timed beside each stage's output
    assert {k: v for k, v in quant["before"].items() if k != "latency_ms"} == same
    # sparsity is counted from the saved weights: unstructured pruning leaves a masked model
    state = torch.load(tmp_path / "model.pruned.pt", weights_only=True)
    weights = [v for k, v in state.items() if k.endswith("weight")]
    zeros, total = sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)
    assert zeros == round(0.8 * total) and prune["after"]["sparsity"] == pytest.approx(zeros / total)
    assert prune["after"]["nonzeros"] == sum(int((v != 0).sum()) for v in state.values())
    assert prune["masked_only"] is True and "masked only" in prune["note"]
    assert prune["after"]["size_sparse_bytes"] < prune["after"]["size_bytes"] / 2
    assert [r["sparsity"] for r in prune["rounds"]] == pytest.approx([0.7, 0.8], abs=1e-3)
    assert set(prune["after"]["latency_ms"]) == {"1", "8"} and prune["after"]["latency_device"] == "cpu"
    assert set(prune["after"]["layers"]) == {"1", "3"}
    # int8: zeros stay zeros, the file is much smaller than the float one
    assert quant["after"]["sparsity"] == pytest.approx(prune["after"]["sparsity"], abs=1e-3)
    assert quant["after"]["size_bytes"] == (tmp_path / "model.quantized.pt").stat().st_size
    assert quant["after"]["size_bytes"] < prune["after"]["size_bytes"] / 3
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("stage") == "prune"]
    assert [(r["round"], r["epoch"]) for r in rows] == [(1, 1), (2, 1)]
    assert len([r for r in read_metrics(tmp_path / "metrics.jsonl") if "stage" not in r]) == cfg["epochs"]
    # each saved model rebuilds from the run folder and scores what the summary says
    (tmp_path / ".hydra").mkdir()
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.create(cfg), tmp_path / ".hydra" / "config.yaml")
    data = load_splits(cfg["dataset"])
    for file, stage in (("model.pruned.pt", prune), ("model.quantized.pt", quant)):
        model = load_stage_model(tmp_path, file)
        with torch.no_grad():
            acc = float((model(data.test_x).argmax(1) == data.test_y).float().mean())
        assert acc == pytest.approx(stage["after"]["test/acc"])


def test_structured_prune_stage_saves_a_compacted_model(tmp_path):
    cfg = compose_cfg("post=prune", "model.hidden=[32,16]", "post.prune.method=structured", "post.prune.sparsity=0.5",
                      "post.prune.finetune_epochs=0", *FAST)
    stage = train(cfg, RunContext(run_dir=tmp_path))["stages"][0]
    assert stage["model"]["hidden"] == [16, 8] and stage["masked_only"] is False
    assert stage["compaction"]["same_predictions"] == 1.0 and stage["compaction"]["max_abs_logit_diff"] < 1e-4
    assert stage["after"]["params"] == 784 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10
    assert stage["after"]["size_bytes"] < stage["before"]["size_bytes"] / 1.9
    assert not any(r.get("stage") for r in read_metrics(tmp_path / "metrics.jsonl"))  # one-shot: no fine-tuning


def test_a_failing_stage_keeps_the_model_and_says_which_stage_failed(tmp_path, monkeypatch):
    def broken(ctx, model, model_cfg):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(quantize, "run", broken)
    cfg = compose_cfg("post=[prune,quantize]", "model.hidden=[16]", *FAST)
    with pytest.raises(StageFailed, match="quantize failed: RuntimeError: kernel exploded"):
        train(cfg, RunContext(run_dir=tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_stage"] == "quantize"
    assert summary["test/acc"] is not None  # training's own numbers stay
    assert [s["status"] for s in summary["stages"]] == ["completed", "failed"]
    assert "kernel exploded" in summary["stages"][1]["error"] and "traceback" in summary["stages"][1]
    assert (tmp_path / "model.pt").exists() and (tmp_path / "model.pruned.pt").exists()
    assert not (tmp_path / "model.quantized.pt").exists()
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == cfg["epochs"] + 1  # training + the fine-tune epoch


@pytest.mark.slow
def test_cli_runs_the_chain_and_refuses_bad_stage_settings_up_front(cli, tmp_path):
    bad = cli("train", *TINY, "post=prune", "post.prune.sparsity=1.5")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "nnopt: error: invalid config: post.prune.sparsity=1.5: a number >= 0 and < 1")
    assert not list(tmp_path.rglob("model.pt"))  # refused before any training
    ok = cli("train", *TINY, "post=[prune,quantize]", *FAST)
    assert ok.returncode == 0, ok.stderr
    (run,) = [p.parent for p in tmp_path.rglob("model.pt")]
    assert {"model.pt", "model.pruned.pt", "model.quantized.pt"} <= {p.name for p in run.iterdir()}
    summary = json.loads((run / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["completed", "completed"]
    assert load_stage_model(run, "model.quantized.pt") is not None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_stages_run_there_and_int8_is_evaluated_on_the_cpu(tmp_path):
    cfg = compose_cfg("post=[distill,prune,quantize]", "device=cuda", "post.distill.epochs=1", *FAST)
    summary = train(cfg, RunContext(run_dir=tmp_path))
    distill, prune, quant = summary["stages"]
    assert distill["after"]["device"].startswith("cuda") and prune["after"]["device"].startswith("cuda")
    assert quant["after"]["device"] == "cpu" and "CPU" in quant["note"]
    assert all(s["status"] == "completed" for s in summary["stages"])


# the run trains at sgd's lr; the pruning fine-tune at lr x 1e30 overflows the weights
DIVERGING_FINE_TUNE = ["post=prune", "optimizer=sgd", "model.hidden=[16]", "post.prune.lr_scale=1e30", *FAST]


def test_a_fine_tune_that_diverges_is_reported_as_diverged(tmp_path):
    cfg = compose_cfg(*DIVERGING_FINE_TUNE)
    with pytest.raises(StageDiverged, match="post-training stage prune: training diverged: loss became") as err:
        train(cfg, RunContext(run_dir=tmp_path))
    assert err.value.exit_code == 3  # as `nnopt train` exits for a run that diverges
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["failed_stage"] == "prune"
    assert summary["test/acc"] is not None  # training's own numbers stay
    (stage,) = summary["stages"]
    assert stage["status"] == "diverged" and stage["error"].startswith("training diverged: loss became")
    assert stage["diverged_at"]["epoch"] == 1 and stage["diverged_at"]["step"] >= 1
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == cfg["epochs"] and not any(r.get("stage") for r in rows)  # no row of the diverged epoch
    assert (tmp_path / "model.pt").exists() and not (tmp_path / "model.pruned.pt").exists()


@pytest.mark.slow
def test_nnopt_train_exits_3_and_keeps_diverged_when_a_fine_tune_diverges(tmp_path):
    out = run_cli("train", *TINY, *DIVERGING_FINE_TUNE, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 3, out.stderr
    assert "nnopt: error: post-training stage prune: training diverged: loss became" in out.stderr
    assert "Traceback" not in out.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["stages"][0]["status"] == "diverged"


def test_the_torch_free_checks_know_every_stage():
    """config/stages.py names the stages without importing torch; post.STAGES runs them."""
    from nnopt_cli.config.stages import STAGE_NAMES
    from nnopt_cli.post import STAGES

    assert STAGE_NAMES == tuple(STAGES)
    with pytest.raises(ConfigError, match="post.prune.sparsity=2"):
        validate(compose_cfg("post=prune", "post.prune.sparsity=2"))
