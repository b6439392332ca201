"""Pruning (torch.nn.utils.prune): zero counts, schedules, permanence, compaction, sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnopt_cli.models import make_model, mlp
from nnopt_cli.models.activation import activation_factory
from nnopt_cli.post.compaction import compact, model_config_of
from nnopt_cli.post.measure import file_sizes, sparsity_report
from nnopt_cli.post.prune import make_permanent, prune_to, sparsity_schedule
from tests.conftest import compose_cfg

SHAPE = (1, 28, 28)


def small_mlp(hidden=(20, 10), act="relu", batch_norm=False) -> nn.Sequential:
    torch.manual_seed(0)
    return mlp(SHAPE, 10, activation_factory(act), hidden=hidden, batch_norm=batch_norm)


def weights(model):
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def test_schedules_rise_to_the_target():
    cubic = sparsity_schedule(0.9, 3, "cubic")
    linear = sparsity_schedule(0.9, 3, "linear")
    assert cubic[-1] == pytest.approx(0.9) and linear == pytest.approx([0.3, 0.6, 0.9])
    assert cubic[0] > linear[0] and cubic == sorted(cubic)  # cubic prunes most early
    assert sparsity_schedule(0.5, 1, "cubic") == [0.5]


def test_layer_pruning_zeros_the_same_fraction_of_every_layer():
    model = small_mlp()
    prune_to(model, "layer", 0.6)
    for w in weights(model):
        assert int((w == 0).sum()) == round(0.6 * w.numel())
    make_permanent(model)
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())
    report = sparsity_report(model)
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert all(layer["sparsity"] == pytest.approx(0.6, abs=1e-2) for layer in report["layers"].values())
    total = sum(p.numel() for p in model.parameters())
    assert report["params"] == total
    assert report["nonzeros"] == sum(int((p != 0).sum()) for p in model.parameters())


def test_global_pruning_removes_the_smallest_weights_across_layers():
    model = small_mlp()
    before = torch.cat([w.detach().abs().flatten() for w in weights(model)])
    prune_to(model, "global", 0.7)
    after = torch.cat([w.detach().flatten() for w in weights(model)])
    assert int((after == 0).sum()) == round(0.7 * after.numel())
    # every kept weight is at least as large as every pruned one
    assert before[after != 0].min() >= before[after == 0].max()
    per_layer = [float((w == 0).float().mean()) for w in weights(model)]
    assert max(per_layer) - min(per_layer) > 0.01  # one threshold, so layers end up different


def test_iterative_pruning_keeps_earlier_zeros_and_reaches_each_target():
    model = small_mlp()
    prune_to(model, "global", 0.3)
    first = [w.detach() == 0 for w in weights(model)]
    with torch.no_grad():  # stands in for fine-tuning: the surviving weights move
        for m in model.modules():
            if hasattr(m, "weight_orig"):
                m.weight_orig.add_(0.05 * torch.randn_like(m.weight_orig))
    prune_to(model, "global", 0.6)
    model(torch.zeros(1, *SHAPE))  # the forward pre-hook recomputes weight = weight_orig * mask
    now = [w.detach() for w in weights(model)]
    assert all(bool((w[z] == 0).all()) for w, z in zip(now, first, strict=True))
    total = sum(w.numel() for w in now)
    assert sum(int((w == 0).sum()) for w in now) == round(0.6 * total)


def test_output_layer_can_be_left_dense():
    model = small_mlp()
    prune_to(model, "layer", 0.5, include_last=False)
    *hidden, last = weights(model)
    assert int((last == 0).sum()) == 0 and all(int((w == 0).sum()) > 0 for w in hidden)


CASES = {
    "mlp_relu": ["model=mlp", "model.hidden=[20,10]", "activation=relu"],
    "mlp_bn_sigmoid": ["model=mlp", "model.hidden=[20,10]", "model.batch_norm=true", "activation=sigmoid"],
    "cnn_bn_tanh": ["model=cnn", "model.channels=[6,8]", "model.fc=[16,12]", "model.batch_norm=true", "activation=tanh"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_structured_compaction_is_smaller_and_predicts_like_the_masked_model(case):
    cfg = compose_cfg(*CASES[case])
    torch.manual_seed(0)
    model = make_model(cfg, SHAPE, 10)
    model(torch.randn(64, *SHAPE))  # train mode: gives BatchNorm non-trivial running statistics
    model.eval()
    prune_to(model, "structured", 0.5, norm=2)
    make_permanent(model)
    # half of each hidden layer's units are entirely zero (weights and bias); classes all kept
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for m in layers[:-1]:
        dead = ~m.weight.flatten(1).ne(0).any(1)
        assert int(dead.sum()) == round(0.5 * m.weight.shape[0]) and bool((m.bias[dead] == 0).all())
    assert bool(layers[-1].weight.ne(0).any(1).all())
    small = compact(model, SHAPE)
    n_masked = sum(p.numel() for p in model.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < 0.5 * n_masked
    x = torch.randn(32, *SHAPE)
    with torch.no_grad():
        a, b = model(x), small(x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert bool((a.argmax(1) == b.argmax(1)).all())
    # the recorded model config rebuilds the compacted architecture exactly
    rebuilt = make_model({**cfg, "model": model_config_of(small, cfg["model"])}, SHAPE, 10)
    rebuilt.load_state_dict(small.state_dict())


def test_compaction_folds_a_dead_unit_with_a_bias_into_the_next_layer():
    model = small_mlp(act="tanh").eval()
    with torch.no_grad():
        model[1].weight[3] = 0  # unit 3 now outputs tanh(bias): a constant
        model[1].bias[3] = 0.7
    small = compact(model, SHAPE)
    assert small[1].out_features == 19
    x = torch.randn(8, *SHAPE)
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)


def test_sizes_on_disk_dense_zip_and_sparse(tmp_path):
    model = small_mlp(hidden=(200,))
    dense_path = tmp_path / "dense.pt"
    torch.save(model.state_dict(), dense_path)
    prune_to(model, "global", 0.9)
    make_permanent(model)
    sparse_path = tmp_path / "pruned.pt"
    torch.save(model.state_dict(), sparse_path)
    dense, pruned = file_sizes(dense_path), file_sizes(sparse_path)
    assert dense["size_bytes"] == dense_path.stat().st_size
    # masked: the dense file does not shrink; encodings that skip zeros do
    assert abs(pruned["size_bytes"] - dense["size_bytes"]) < 0.01 * dense["size_bytes"]
    assert pruned["size_sparse_bytes"] < 0.25 * pruned["size_bytes"]
    assert pruned["size_zip_bytes"] < 0.4 * pruned["size_bytes"]
    assert dense["size_zip_bytes"] > 0.8 * dense["size_bytes"]  # random floats barely compress
