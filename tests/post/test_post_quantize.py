"""Int8 post-training quantization: torch.ao eager (dynamic, static) and torchao (dynamic, weight-only)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from nnopt_cli.errors import ConfigError
from nnopt_cli.models import make_model
from nnopt_cli.post.measure import load_state, sparsity_report
from nnopt_cli.post.prune import make_permanent, prune_to
from nnopt_cli.post.quantize import quantize_model, rebuild_quantized
from nnopt_cli.run.validate import validate
from tests.conftest import compose_cfg

SHAPE = (1, 28, 28)


def build(*overrides: str) -> nn.Module:
    torch.manual_seed(0)
    return make_model(compose_cfg(*overrides), SHAPE, 10).eval()


def saved_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x).argmax(1) == b(x).argmax(1)).float().mean())


@pytest.mark.parametrize("backend,method", [("eager", "dynamic"), ("torchao", "dynamic"), ("torchao", "weight_only")])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_linear_int8_is_about_4x_smaller_and_close_to_float(backend, method, granularity):
    pytest.importorskip("torchao") if backend == "torchao" else None
    model = build("model.hidden=[256]")
    q = quantize_model(model, method, backend, granularity)
    x = torch.randn(64, *SHAPE)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert agreement(model, q, x) >= 0.95
    assert saved_bytes(q) < saved_bytes(model) / 3.5
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the input model is untouched
    # the saved state loads with weights_only=True into a rebuilt quantized model
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    again = rebuild_quantized(build("model.hidden=[256]"), method, backend, granularity, SHAPE)
    again.load_state_dict(load_state(buf))
    with torch.no_grad():
        torch.testing.assert_close(again(x), out)


def test_eager_granularity_sets_the_weight_qscheme():
    model = build("model.hidden=[32]")
    per_tensor = quantize_model(model, "dynamic", "eager", "per_tensor")
    per_channel = quantize_model(model, "dynamic", "eager", "per_channel")
    assert per_tensor[1].weight().qscheme() == torch.per_tensor_affine
    assert per_channel[1].weight().qscheme() == torch.per_channel_affine
    assert per_channel[1].weight().q_per_channel_scales().numel() == 32


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_static_quantizes_convolutions_with_calibration(granularity):
    model = build("model=cnn", "model.batch_norm=true", "model.channels=[4,8]", "model.fc=[32]")
    calib = [torch.randn(32, *SHAPE) for _ in range(4)]
    q = quantize_model(model, "static", "eager", granularity, calib)
    kinds = {type(m).__module__ for m in q.modules()}
    assert any("ao.nn.intrinsic.quantized" in k or "ao.nn.quantized" in k for k in kinds)
    convs = [m for m in q.modules() if "Conv" in type(m).__name__ and hasattr(m, "weight") and callable(m.weight)]
    assert len(convs) == 2 and all(c.weight().dtype == torch.qint8 for c in convs)
    assert agreement(model, q, calib[0]) >= 0.8
    assert saved_bytes(q) < saved_bytes(model) / 2  # tiny model: pickling overhead is a large share


def test_static_needs_calibration_batches():
    with pytest.raises(ValueError, match="calibration"):
        quantize_model(build("model.hidden=[8]"), "static", "eager", "per_tensor", [])


def test_zeros_stay_zeros_after_quantization_and_are_counted_from_int8_weights():
    model = build("model.hidden=[64]")
    prune_to(model, "global", 0.8)
    make_permanent(model)
    q = quantize_model(model, "dynamic", "eager", "per_tensor")
    assert sparsity_report(q)["sparsity"] == pytest.approx(sparsity_report(model)["sparsity"], abs=1e-3)
    assert sparsity_report(q)["params"] == sparsity_report(model)["params"]


def test_a_model_without_quantizable_layers_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    with pytest.raises(ConfigError, match="no Linear layers"):
        quantize_model(model, "dynamic", "eager", "per_tensor")


@pytest.mark.parametrize("overrides,key", [
    (["post.quantize.method=weight_only"], "post.quantize.method"),  # eager has no weight-only int8
    (["post.quantize.method=static", "post.quantize.backend=torchao"], "post.quantize.method"),
    (["post.quantize.method=static", "activation=silu"], "activation.name"),
    (["post.quantize.method=int4"], "post.quantize.method"),
    (["post.quantize.granularity=per_group"], "post.quantize.granularity"),
    (["post.quantize.calibration_batches=0"], "post.quantize.calibration_batches"),
])
def test_bad_quantize_settings_fail_before_training(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("post=quantize", *overrides))
    assert err.value.key == key and "\n" not in str(err.value)
