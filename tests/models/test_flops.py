"""Forward FLOPs per sample (torch.utils.flop_counter) against hand counts, and in the stage summary."""

from __future__ import annotations

import pytest
from torch import nn

from nnopt_cli.models.flops import forward_flops
from nnopt_cli.run.recipe import RunContext, train
from tests.conftest import compose_cfg

FAST = ["post.measure.latency_repeats=2", "post.measure.latency_warmup=0", "post.measure.latency_batch_sizes=[1]"]


def test_mlp_flops_are_two_per_weight_bias_adds_not_counted():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                          nn.Linear(100, 10))
    # 2 * in * out per Linear (a multiply and an add per weight); torch counts no bias add or ReLU
    assert forward_flops(model, (1, 28, 28)) == 2 * (784 * 300 + 300 * 100 + 100 * 10) == 532_400
    no_bias = nn.Sequential(nn.Flatten(), nn.Linear(784, 300, bias=False), nn.ReLU(), nn.Linear(300, 100, bias=False),
                            nn.ReLU(), nn.Linear(100, 10, bias=False))
    assert forward_flops(no_bias, (1, 28, 28)) == 532_400


def test_conv_flops_per_output_position_and_batchnorm_in_train_mode():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 13 * 13, 16), nn.BatchNorm1d(16), nn.Linear(16, 10)).train()
    conv = 2 * (26 * 26 * 4) * (1 * 3 * 3)  # 2 * output elements * inputs per output
    assert forward_flops(model, (1, 28, 28)) == conv + 2 * 4 * 13 * 13 * 16 + 2 * 16 * 10
    assert model.training  # counted in eval mode (BatchNorm1d refuses a batch of one in train mode), restored


def test_every_stage_records_flops_before_and_after(tmp_path):
    cfg = compose_cfg("post=[prune,quantize]", "model.hidden=[32,16]", "post.prune.method=structured",
                      "post.prune.sparsity=0.5", "post.prune.finetune_epochs=0", *FAST)
    summary = train(cfg, RunContext(run_dir=tmp_path))
    prune, quant = summary["stages"]
    dense = 2 * (784 * 32 + 32 * 16 + 16 * 10)
    compacted = 2 * (784 * 16 + 16 * 8 + 8 * 10)
    assert prune["before"]["flops"] == dense and prune["after"]["flops"] == compacted
    # dynamic int8 kernels are invisible to torch's counter: the stage records the float model's count
    assert quant["before"]["flops"] == quant["after"]["flops"] == compacted and "flops_note" in quant


def test_masked_pruning_does_not_change_dense_flops(tmp_path):
    cfg = compose_cfg("post=prune", "model.hidden=[32]", "post.prune.sparsity=0.8", "post.prune.finetune_epochs=0",
                      *FAST)
    stage = train(cfg, RunContext(run_dir=tmp_path))["stages"][0]
    assert stage["after"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert stage["before"]["flops"] == stage["after"]["flops"] == 2 * (784 * 32 + 32 * 10)
