"""Scale rules (max, mean, percentile, mse), the asymmetric scheme, 1-bit weights and their
straight-through gradient, and the per-layer reconstruction errors a quantize stage records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nnopt_cli.errors import ConfigError
from nnopt_cli.post.fake_quant import BinarizeSTE, Rule, fake_quantize_model, fake_quantize_weight
from nnopt_cli.post.load import load_stage_model
from nnopt_cli.post.quantize import layer_errors, quantize_model
from nnopt_cli.run.validate import validate
from tests.conftest import compose_cfg
from tests.post.test_post_lowbit import reloaded_acc, run_stage

W = np.array([[0.9, -0.31, 0.05, -0.62, 0.11],
              [0.013, -0.2, 0.17, 0.045, -0.08],
              [-1.7, 0.44, 0.0, 0.26, 0.5]], dtype=np.float32)


def snap(w: np.ndarray, clip: np.ndarray, bits: int) -> np.ndarray:
    """The symmetric grid of clipping range `clip` (per row, shape (rows, 1)), written out."""
    q = 2 ** (bits - 1) - 1
    scale = clip / q
    return np.clip(np.round(w / scale), -q, q) * scale


def rows_of(per_channel: bool) -> np.ndarray:
    return W if per_channel else W.reshape(1, -1)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mean_rule_clips_at_a_stated_multiple_of_the_mean_magnitude(per_channel, bits):
    rows = rows_of(per_channel)
    clip = 2.5 * np.abs(rows).mean(axis=1, keepdims=True)
    hand = snap(rows, clip, bits).reshape(W.shape)
    rule = Rule(bits, "per_channel" if per_channel else "per_tensor", "mean", mean_factor=2.5)
    out, scale = fake_quantize_weight(torch.from_numpy(W), rule)
    np.testing.assert_allclose(out.numpy(), hand, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scale.numpy().reshape(-1), (clip / (2 ** (bits - 1) - 1)).reshape(-1), rtol=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_percentile_rule_clips_the_outliers(per_channel):
    rows = rows_of(per_channel)
    clip = np.percentile(np.abs(rows), 80, axis=1, keepdims=True)  # numpy's linear interpolation
    hand = snap(rows, clip, 3).reshape(W.shape)
    rule = Rule(3, "per_channel" if per_channel else "per_tensor", "percentile", percentile=80)
    out, _ = fake_quantize_weight(torch.from_numpy(W), rule)
    np.testing.assert_allclose(out.numpy(), hand, rtol=1e-6, atol=1e-7)
    assert np.abs(out.numpy()).max() < np.abs(W).max()  # -1.7 was clipped


@pytest.mark.parametrize("per_channel", [False, True])
def test_mse_rule_takes_the_grid_candidate_with_the_least_error(per_channel):
    rows = rows_of(per_channel).astype(np.float64)
    best = []
    for r in rows:  # every candidate t * max|w|, t = 1/100 .. 1, tried by hand
        top = np.abs(r).max()
        errs = [((snap(r[None], np.array([[top * i / 100]]), 2) - r) ** 2).sum() for i in range(1, 101)]
        best.append(snap(r[None], np.array([[top * (int(np.argmin(errs)) + 1) / 100]]), 2)[0])
    hand = np.stack(best).reshape(W.shape)
    out, _ = fake_quantize_weight(torch.from_numpy(W), Rule(2, "per_channel" if per_channel else "per_tensor", "mse"))
    np.testing.assert_allclose(out.numpy(), hand, rtol=1e-5, atol=1e-6)
    max_rule, _ = fake_quantize_weight(torch.from_numpy(W), Rule(2, "per_channel" if per_channel else "per_tensor"))
    assert ((out.numpy() - W) ** 2).sum() < ((max_rule.numpy() - W) ** 2).sum()  # max|w| is one candidate


def test_asymmetric_eight_bits_round_trips_the_unsigned_grid_exactly():
    # w = k / 256 for k = -128..127: the unsigned 8-bit code round(w * 256) + 128 holds every value
    w = torch.arange(-128, 128, dtype=torch.float32).div(256).reshape(2, 128)
    out, scale = fake_quantize_weight(w, Rule(8, "per_tensor", scheme="asymmetric"))
    assert float(scale) == pytest.approx(1 / 256, rel=1e-6)
    assert torch.equal(out, w)
    code = torch.round(w * 256) + 128
    assert int(code.min()) == 0 and int(code.max()) == 255


def test_asymmetric_follows_the_zero_point_rule_on_a_skewed_tensor():
    w = np.array([[0.05, 0.9, 0.33, -0.12, 0.61]], dtype=np.float32)
    lo, hi = w.min(), w.max()
    scale = (hi - lo) / 15
    zp = np.clip(np.round(-lo / scale), 0, 15)
    hand = (np.clip(np.round(w / scale) + zp, 0, 15) - zp) * scale
    out, _ = fake_quantize_weight(torch.from_numpy(w), Rule(4, "per_tensor", scheme="asymmetric"))
    np.testing.assert_allclose(out.numpy(), hand, rtol=1e-6, atol=1e-7)
    # 16 levels over the range, against 15 over the symmetric [-0.9, 0.9]: a smaller error here
    sym, _ = fake_quantize_weight(torch.from_numpy(w), 4)
    assert np.abs(out.numpy() - w).max() <= scale / 2 + 1e-7 < np.abs(sym.numpy() - w).max()


@pytest.mark.parametrize("per_channel", [False, True])
def test_one_bit_weights_are_plus_or_minus_the_mean_magnitude(per_channel):
    rows = rows_of(per_channel)
    alpha = np.abs(rows).mean(axis=1, keepdims=True)  # XNOR-Net
    hand = np.where(rows >= 0, alpha, -alpha).reshape(W.shape)
    out, scale = fake_quantize_weight(torch.from_numpy(W), Rule(1, "per_channel" if per_channel else "per_tensor",
                                                                   "mean"))
    np.testing.assert_allclose(out.numpy(), hand, rtol=1e-6)
    for row, a in zip(out.numpy().reshape(len(alpha), -1), alpha[:, 0], strict=True):
        values = np.unique(row)  # exactly two values per scale group: -scale and +scale
        assert len(values) == 2 and values[0] == -values[1] and values[1] == pytest.approx(a, rel=1e-6)
    assert out.numpy()[2, 2] > 0  # sign(0) = +1: no third value


def test_straight_through_gradient_passes_where_the_weight_is_within_one():
    w = torch.tensor([[0.5, -2.0, 0.0, 1.0, -0.25, 1.5]], requires_grad=True)
    g = torch.tensor([[0.1, 0.2, -0.3, 0.4, 0.5, -0.6]])
    out = BinarizeSTE.apply(w, Rule(1, "per_tensor", "mean"))
    (out * g).sum().backward()
    assert torch.equal(w.grad, torch.tensor([[0.1, 0.0, -0.3, 0.4, 0.5, 0.0]]))  # zero where |w| > 1
    alpha = (0.5 + 2.0 + 0.0 + 1.0 + 0.25 + 1.5) / 6
    torch.testing.assert_close(out.detach(), torch.tensor([[1, -1, 1, 1, -1, 1]]) * alpha)


def test_layer_errors_match_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    q, layers = fake_quantize_model(model, Rule(3, "per_channel", "percentile", percentile=95))
    for name in ("0", "3"):
        w, wq = dict(model.named_modules())[name].weight.detach(), dict(q.named_modules())[name].weight.detach()
        diff = (w - wq).flatten()
        rel = float(torch.sqrt((diff ** 2).sum()) / torch.sqrt((w.flatten() ** 2).sum()))
        assert layers[name]["rel_l2_error"] == pytest.approx(rel, rel=1e-5)
        assert layers[name]["max_abs_error"] == pytest.approx(float(diff.abs().max()), rel=1e-5)
        assert layer_errors(model, q)[name] == pytest.approx({k: layers[name][k] for k in ("rel_l2_error", "max_abs_error")})


def test_torchao_asymmetric_weight_only_uses_a_zero_point():
    pytest.importorskip("torchao")
    w = np.array([[0.05, 0.9, 0.33, -0.12, 0.61], [-0.4, -0.2, 0.1, -0.7, 0.0]], dtype=np.float32)
    model = nn.Sequential(nn.Linear(5, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(w))
    q = quantize_model(model, "weight_only", "torchao", "per_channel", bits=4, scheme="asymmetric")
    lo, hi = np.minimum(w.min(1, keepdims=True), 0), np.maximum(w.max(1, keepdims=True), 0)
    scale = (hi - lo) / 15
    zp = np.clip(-8 - np.round(lo / scale), -8, 7)  # torchao: a signed int4 code with a zero point
    hand = (np.clip(np.round(w / scale) + zp, -8, 7) - zp) * scale
    np.testing.assert_allclose(q[0].weight.dequantize().numpy(), hand, rtol=1e-5, atol=1e-6)
    err = layer_errors(model, q)["0"]
    assert err["max_abs_error"] == pytest.approx(float(np.abs(hand - w).max()), rel=1e-4)


def test_fake_stage_records_the_rule_and_per_layer_errors(tmp_path):
    summary, data = run_stage(tmp_path, "model.hidden=[32]", "post.quantize.method=fake", "post.quantize.bits=4",
                              "post.quantize.granularity=per_channel", "post.quantize.scale=mse")
    st = summary["stages"][0]
    assert "least squared error" in st["scale_rule"] and "per channel" in st["scale_rule"]
    model = load_stage_model(tmp_path, "model.quantized.pt")
    assert set(st["fake_layers"]) == {"1", "3"}
    for v in st["fake_layers"].values():
        assert 0 < v["rel_l2_error"] < 0.5 and v["max_abs_error"] > 0
    assert reloaded_acc(tmp_path, data) == pytest.approx(st["after"]["test/acc"])
    assert all(torch.unique(row).numel() <= 15 for row in model[1].weight)


def test_asymmetric_weight_only_stage_records_errors_and_reloads(tmp_path):
    pytest.importorskip("torchao")
    summary, data = run_stage(tmp_path, "model.hidden=[32]", "post.quantize.method=weight_only",
                              "post.quantize.backend=torchao", "post.quantize.bits=4",
                              "post.quantize.granularity=per_channel", "post.quantize.scheme=asymmetric")
    st = summary["stages"][0]
    assert st["status"] == "completed" and "ASYMMETRIC" in st["scale_rule"]
    assert set(st["layer_errors"]) == {"1", "3"}
    assert all(0 < v["rel_l2_error"] < 0.3 for v in st["layer_errors"].values())
    model = load_stage_model(tmp_path, "model.quantized.pt")
    assert model[1].weight.target_dtype == torch.int4 and bool((model[1].weight.zero_point != 0).any())
    assert reloaded_acc(tmp_path, data) == pytest.approx(st["after"]["test/acc"])


def test_dynamic_int8_stage_records_per_layer_errors(tmp_path):
    summary, _ = run_stage(tmp_path, "model.hidden=[32]")
    errors = summary["stages"][0]["layer_errors"]
    assert set(errors) == {"1", "3"} and all(0 < v["rel_l2_error"] < 0.02 for v in errors.values())


def test_one_bit_qat_trains_above_chance_and_saves_two_values_per_unit(tmp_path):
    # noisier data than the default, which any model gets right (the binary model reaches 0.87 here)
    summary, data = run_stage(tmp_path, "model.hidden=[64]", "dataset.noise=1.0", "post.quantize.method=qat",
                              "post.quantize.bits=1", "post.quantize.scale=mean",
                              "post.quantize.granularity=per_channel", "post.quantize.finetune_epochs=3")
    st = summary["stages"][0]
    assert st["status"] == "completed" and "BinaryConnect" in st["engine"] and st["after"]["weight_bits"] == 1
    chance = 1 / data.num_classes
    assert st["after"]["test/acc"] > chance + 0.2
    assert st["after"]["test/acc"] == pytest.approx(st["fake_quantized"]["test/acc"])  # convert changes nothing
    model = load_stage_model(tmp_path, "model.quantized.pt")
    for layer in (model[1], model[3]):
        for row in layer.weight.detach():
            values = torch.unique(row)
            assert values.numel() == 2 and float(values[0]) == -float(values[1])
    assert set(st["layer_errors"]) == {"1", "3"}
    assert reloaded_acc(tmp_path, data) == pytest.approx(st["after"]["test/acc"])


@pytest.mark.parametrize("overrides,key", [
    (["post.quantize.method=fake", "post.quantize.scale=median"], "post.quantize.scale"),
    (["post.quantize.method=fake", "post.quantize.scheme=unsigned"], "post.quantize.scheme"),
    (["post.quantize.method=fake", "post.quantize.scale=percentile", "post.quantize.percentile=0"],
     "post.quantize.percentile"),
    (["post.quantize.method=fake", "post.quantize.scale=percentile", "post.quantize.percentile=100.5"],
     "post.quantize.percentile"),
    (["post.quantize.method=fake", "post.quantize.scale=mean", "post.quantize.mean_factor=-1"],
     "post.quantize.mean_factor"),
    (["post.quantize.method=fake", "post.quantize.bits=1", "post.quantize.scale=max"], "post.quantize.scale"),
    (["post.quantize.method=fake", "post.quantize.bits=1", "post.quantize.scale=mean",
      "post.quantize.scheme=asymmetric"], "post.quantize.scheme"),
    (["post.quantize.bits=1", "post.quantize.scale=mean"], "post.quantize.bits"),              # dynamic
    (["post.quantize.method=weight_only", "post.quantize.backend=torchao", "post.quantize.granularity=per_channel",
      "post.quantize.scale=mse"], "post.quantize.scale"),
    (["post.quantize.scheme=asymmetric"], "post.quantize.scheme"),                             # dynamic
    (["post.quantize.method=fake", "post.quantize.scheme=asymmetric", "post.quantize.scale=mse"],
     "post.quantize.scale"),
])
def test_bad_rule_settings_fail_in_one_line_before_training(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("post=quantize", *overrides))
    assert err.value.key == key and "\n" not in str(err.value)


def test_one_bit_qat_needs_no_torchao_backend():
    validate(compose_cfg("post=quantize", "post.quantize.method=qat", "post.quantize.bits=1", "post.quantize.scale=mean"))


def test_the_default_scale_rule_is_the_mean_for_one_bit_and_the_max_otherwise():
    from nnopt_cli.post.fake_quant import Rule

    one = compose_cfg("post=quantize", "post.quantize.method=fake", "post.quantize.bits=1")
    validate(one)
    assert Rule.from_settings(one["post"]["quantize"]).scale == "mean"
    four = compose_cfg("post=quantize", "post.quantize.method=fake", "post.quantize.bits=4")
    assert Rule.from_settings(four["post"]["quantize"]).scale == "max"
