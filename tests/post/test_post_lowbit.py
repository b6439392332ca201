"""Weight bit widths below 8: fake quantization (any width), torchao int4 weight-only, QAT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nnopt_cli.data import load_splits
from nnopt_cli.errors import ConfigError
from nnopt_cli.post.fake_quant import fake_quantize_model, fake_quantize_weight, packed_bytes
from nnopt_cli.post.load import load_stage_model
from nnopt_cli.post.measure import weight_bits
from nnopt_cli.post.quantize import quantize_model
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from tests.conftest import compose_cfg

FAST = ["post.measure.latency_repeats=2", "post.measure.latency_warmup=0", "post.measure.latency_batch_sizes=[1]"]
INT4 = ["post.quantize.bits=4", "post.quantize.backend=torchao", "post.quantize.granularity=per_channel"]
W = np.array([[0.9, -0.31, 0.05, -0.62],
              [0.013, -0.2, 0.17, 0.045],
              [-1.7, 0.44, 0.0, 0.26]], dtype=np.float32)


def run_stage(tmp_path, *overrides: str) -> dict:
    """Train with the stage; save the config where load_stage_model reads it (the CLI does that)."""
    from omegaconf import OmegaConf

    cfg = compose_cfg("post=quantize", *overrides, *FAST)
    summary = train(cfg, RunContext(run_dir=tmp_path))
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / ".hydra" / "config.yaml")
    return summary, load_splits(cfg["dataset"])


def reloaded_acc(run_dir, data) -> float:
    """Test accuracy of the saved model.quantized.pt rebuilt from the run folder."""
    model = load_stage_model(run_dir, "model.quantized.pt")
    with torch.no_grad():
        return float((model(data.test_x.cpu()).argmax(1) == data.test_y.cpu()).float().mean())


def hand_fake(w: np.ndarray, bits: int, per_channel: bool) -> np.ndarray:
    q = 2 ** (bits - 1) - 1
    scale = np.abs(w).max(axis=1, keepdims=True) / q if per_channel else np.abs(w).max() / q
    return np.clip(np.round(w / scale), -q, q) * scale  # np.round: half to even


@pytest.mark.parametrize("bits", [8, 6, 4, 3, 2])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_fake_quantization_matches_the_scale_rule(bits, granularity):
    out, scale = fake_quantize_weight(torch.from_numpy(W), bits, granularity)
    np.testing.assert_allclose(out.numpy(), hand_fake(W, bits, granularity == "per_channel"), rtol=1e-6, atol=1e-7)
    assert scale.numel() == (3 if granularity == "per_channel" else 1)
    levels = 2 * (2 ** (bits - 1) - 1) + 1  # per scale: -qmax..qmax
    assert all(torch.unique(row).numel() <= levels for row in (out if granularity == "per_channel" else [out]))


def test_two_bits_is_ternary_and_per_channel_keeps_small_rows():
    out, _ = fake_quantize_weight(torch.from_numpy(W), 2, "per_tensor")
    assert set(torch.unique(out / 1.7).round().tolist()) <= {-1.0, 0.0, 1.0}
    assert bool((out[1] == 0).all())  # row 1 is below half the largest |w|: all zero with one scale
    per_row, _ = fake_quantize_weight(torch.from_numpy(W), 2, "per_channel")
    assert bool((per_row[1] != 0).any())  # its own scale keeps it


def test_fake_model_copy_snaps_linear_and_conv_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 26 * 26, 10))
    q, layers = fake_quantize_model(model, 3, "per_channel")
    assert set(layers) == {"0", "3"} and all(v["distinct_values"] <= 7 * v["scales"] for v in layers.values())
    assert layers["0"]["scales"] == 3 and layers["3"]["scales"] == 10
    assert not torch.equal(model[3].weight, q[3].weight)  # a copy: the input is unchanged
    assert torch.equal(model[3].bias, q[3].bias)
    weights = 3 * 9 + 3 * 26 * 26 * 10
    assert packed_bytes(q, 3, 13) == -(-weights * 3 // 8) + 4 * 13 + 4 * (3 + 10)


def test_torchao_int4_weight_only_follows_its_symmetric_rule_on_the_cpu():
    pytest.importorskip("torchao")
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(W))
    q = quantize_model(model, "weight_only", "torchao", "per_channel", bits=4)
    w = q[0].weight
    assert w.target_dtype == torch.int4 and int(w.qdata.min()) >= -8 and int(w.qdata.max()) <= 7
    scale = np.abs(W).max(axis=1, keepdims=True) / 7.5  # torchao: max|w| / ((2^4 - 1) / 2)
    hand = np.clip(np.round(W / scale), -8, 7) * scale
    np.testing.assert_allclose(w.dequantize().numpy(), hand, rtol=1e-5, atol=1e-6)
    assert weight_bits(q) == 4 and weight_bits(model) == 32


def test_weight_bits_of_int8_models():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    assert weight_bits(quantize_model(model, "dynamic", "eager", "per_tensor")) == 8
    pytest.importorskip("torchao")
    assert weight_bits(quantize_model(model, "weight_only", "torchao", "per_tensor")) == 8


def test_int4_stage_on_tiny_data_records_size_accuracy_and_bits(tmp_path):
    pytest.importorskip("torchao")
    summary, data = run_stage(tmp_path, "model.hidden=[64]", "post.quantize.method=weight_only", *INT4)
    st = summary["stages"][0]
    assert st["status"] == "completed" and st["bits"] == 4 and "max|w|" in st["scale_rule"]
    before, after = st["before"], st["after"]
    assert after["weight_bits"] == 4 and before["weight_bits"] == 32
    assert after["size_bytes"] < before["size_bytes"] / 3  # int4 held in int8 bytes: about 4x, not 8x
    weights = 784 * 64 + 64 * 10
    assert after["size_packed_bytes"] == weights // 2 + 4 * (64 + 10) + 4 * (64 + 10)
    assert after["test/acc"] >= before["test/acc"] - 0.1
    assert load_stage_model(tmp_path, "model.quantized.pt")[1].weight.target_dtype == torch.int4
    assert reloaded_acc(tmp_path, data) == pytest.approx(after["test/acc"])


def test_qat_stage_trains_fake_quantized_weights_then_converts(tmp_path):
    pytest.importorskip("torchao")
    summary, data = run_stage(tmp_path, "model.hidden=[64]", "post.quantize.method=qat", *INT4,
                              "post.quantize.finetune_epochs=2")
    st = summary["stages"][0]
    assert st["status"] == "completed" and "qat" in st["engine"]
    # the converted model computes what the fake-quantized one was trained to: the same accuracy
    assert st["after"]["test/acc"] == pytest.approx(st["fake_quantized"]["test/acc"])
    assert st["after"]["weight_bits"] == 4 and st["after"]["size_bytes"] < st["before"]["size_bytes"] / 3
    rows = [r for r in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"qat"' in r]
    assert len(rows) == 2  # one tagged row per QAT epoch
    assert load_stage_model(tmp_path, "model.quantized.pt")[1].weight.target_dtype == torch.int4
    assert reloaded_acc(tmp_path, data) == pytest.approx(st["after"]["test/acc"])


def test_fake_stage_keeps_a_float_model_and_records_the_simulated_bits(tmp_path):
    summary, data = run_stage(tmp_path, "model.hidden=[32]", "post.quantize.method=fake", "post.quantize.bits=3",
                              "post.quantize.granularity=per_channel")
    st = summary["stages"][0]
    assert st["after"]["weight_bits"] == 3 and "per channel" in st["scale_rule"]
    assert all(v["distinct_values"] <= 7 * v["scales"] for v in st["fake_layers"].values())
    model = load_stage_model(tmp_path, "model.quantized.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.unique(model[1].weight[0]).numel() <= 7
    assert reloaded_acc(tmp_path, data) == pytest.approx(st["after"]["test/acc"])


@pytest.mark.parametrize("overrides,key", [
    (["post.quantize.bits=4"], "post.quantize.bits"),                                        # dynamic is int8
    (["post.quantize.method=fake", "post.quantize.bits=0"], "post.quantize.bits"),
    (["post.quantize.method=fake", "post.quantize.bits=16"], "post.quantize.bits"),
    (["post.quantize.method=weight_only", "post.quantize.backend=torchao", "post.quantize.bits=4"],
     "post.quantize.granularity"),                                                           # no per-tensor intN
    (["post.quantize.method=qat", "post.quantize.granularity=per_channel"], "post.quantize.method"),  # eager
    (["post.quantize.method=qat", *INT4, "post.quantize.finetune_epochs=0"], "post.quantize.finetune_epochs"),
    (["post.quantize.method=qat", *INT4, "post.quantize.lr_scale=0"], "post.quantize.lr_scale"),
])
def test_bad_low_bit_settings_fail_before_training(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("post=quantize", *overrides))
    assert err.value.key == key and "\n" not in str(err.value)



def test_bits_preset_sweeps_fake_quantization():
    cfg = compose_cfg("+experiment=quant_bits", "post.quantize.bits=3")
    assert cfg["post"]["quantize"]["method"] == "fake" and cfg["model"]["name"] == "mlp"
    validate(cfg)


def test_new_keys_at_their_defaults_keep_old_run_fingerprints():
    from nnopt_cli.store.checkpoint import config_fingerprint

    cfg = compose_cfg("post=[prune,quantize]")
    old = {**cfg, "post": {**cfg["post"], "prune": dict(cfg["post"]["prune"]), "quantize": dict(cfg["post"]["quantize"])}}
    del old["post"]["prune"]["threshold"]  # a run folder written before these keys existed
    for key in ("bits", "finetune_epochs", "lr_scale", "scale", "scheme", "percentile", "mean_factor"):
        del old["post"]["quantize"][key]
    old["batch_size"] = {k: v for k, v in cfg["batch_size"].items() if k != "accumulate"}
    assert config_fingerprint(cfg) == config_fingerprint(old)
    assert config_fingerprint(compose_cfg("post=[prune,quantize]", "post.quantize.bits=4")) != config_fingerprint(old)
    for changed in ("post.quantize.scale=mse", "post.quantize.scheme=asymmetric", "batch_size.accumulate=2"):
        assert config_fingerprint(compose_cfg("post=[prune,quantize]", changed)) != config_fingerprint(old)
