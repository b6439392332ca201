"""init_from (start from another run's weights) and freeze, on tiny synthetic data."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from nnopt_cli.errors import ConfigError
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store.folder import read_metrics
from tests.conftest import compose_cfg

SMALL = ["model.hidden=[32,16]"]


def weights(folder, name="model.pt"):
    return torch.load(folder / name, weights_only=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    cfg = compose_cfg(*SMALL, "epochs=2", "post=prune", "post.prune.method=structured", "post.prune.sparsity=0.5",
                      "post.prune.finetune_epochs=0", "post.measure.latency_repeats=1",
                      "post.measure.latency_warmup=0", "post.measure.latency_batch_sizes=[1]")
    train(cfg, RunContext(folder))
    (folder / ".hydra").mkdir()  # what `nnopt train` writes beside the runner's files
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def test_fine_tune_starts_from_the_source_weights(source, tmp_path):
    cfg = compose_cfg(*SMALL, f"init_from={source}", "epochs=1", "seed=5")
    summary = train(cfg, RunContext(tmp_path))
    start, src = weights(tmp_path, "model.init.pt"), weights(source)
    assert all(torch.equal(start[k], src[k]) for k in src)  # the run's starting point is the source's model
    info = summary["init_from"]
    assert info["file"] == "model.pt" and info["reinitialized"] == [] and set(info["loaded"]) == set(src)
    assert json.loads((tmp_path / "summary.json").read_text())["init_from"]["run"] == str(source)


def test_a_changed_output_layer_is_reinitialized_and_listed(source, tmp_path):
    cfg = compose_cfg(*SMALL, f"init_from={source}", "dataset.num_classes=5", "epochs=1")
    summary = train(cfg, RunContext(tmp_path))
    assert summary["init_from"]["reinitialized"] == ["5.weight", "5.bias"]  # Flatten, 32, act, 16, act, out
    start, src = weights(tmp_path, "model.init.pt"), weights(source)
    assert torch.equal(start["1.weight"], src["1.weight"]) and start["5.weight"].shape == (5, 16)


def test_from_a_compacted_pruned_model(source, tmp_path):
    stage = json.loads((source / "summary.json").read_text())["stages"][0]
    widths = stage["model"]["hidden"]
    assert widths != [32, 16]  # structured pruning with compaction made the layers narrower
    spec = f"init_from={source}:model.pruned.pt"
    with pytest.raises(ConfigError, match=r"set model.hidden=") as e:  # the user's model must say the widths
        validate(compose_cfg(*SMALL, spec))
    assert str(widths).replace(" ", "") in str(e.value).replace(" ", "")
    summary = train(compose_cfg(f"model.hidden=[{','.join(map(str, widths))}]", spec, "epochs=1"),
                    RunContext(tmp_path))
    assert summary["init_from"]["file"] == "model.pruned.pt" and summary["init_from"]["reinitialized"] == []
    pruned = weights(source, "model.pruned.pt")
    assert torch.equal(weights(tmp_path, "model.init.pt")["1.weight"], pruned["1.weight"])


def test_frozen_layers_stay_bit_identical_and_the_others_train(source, tmp_path):
    summary = train(compose_cfg(*SMALL, f"init_from={source}", "freeze=1", "epochs=2"), RunContext(tmp_path))
    assert summary["frozen"] == ["1.weight", "1.bias"]
    start, end = weights(tmp_path, "model.init.pt"), weights(tmp_path)
    assert torch.equal(start["1.weight"], end["1.weight"]) and torch.equal(start["1.bias"], end["1.bias"])
    assert not torch.equal(start["3.weight"], end["3.weight"])
    by_name = train(compose_cfg(*SMALL, "freeze=[3]", "epochs=1"), RunContext(tmp_path / "named"))
    assert by_name["frozen"] == ["3.weight", "3.bias"]


def test_resume_of_an_init_from_run_is_bit_exact(source, tmp_path, monkeypatch):
    import nnopt_cli.run.recipe as runner

    cfg = compose_cfg(*SMALL, f"init_from={source}", "epochs=3")
    train(cfg, RunContext(tmp_path / "alone"))
    calls, original = {"n": 0}, runner.evaluate_split

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # a kill while epoch 2 is validated
        return original(*a, **k)

    monkeypatch.setattr(runner, "evaluate_split", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, RunContext(tmp_path / "cut"))
    monkeypatch.setattr(runner, "evaluate_split", original)
    train(cfg, RunContext(tmp_path / "cut", resume=True))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time_s", "train_s")} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "alone/metrics.jsonl")) == strip(read_metrics(tmp_path / "cut/metrics.jsonl"))
    a, b = weights(tmp_path / "alone"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_sources_are_one_line(source, tmp_path):
    cases = [
        (f"init_from={tmp_path / 'nope'}", "not found"),
        (f"init_from={source}:model.student.pt", "not found"),
        (f"init_from={source}:model.quantized.pt", "int8"),
        (f"init_from={source}:checkpoint.pt", "resume="),
        ("model.hidden=[8]", "set model.hidden=[32, 16]"),
    ]
    for override, text in cases:
        extra = [] if override.startswith("init_from") else [f"init_from={source}"]
        with pytest.raises(ConfigError) as e:
            validate(compose_cfg(*SMALL, override, *extra))
        assert e.value.key == "init_from" and text in str(e.value) and "\n" not in str(e.value), override
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ".hydra").mkdir()
    (bad / ".hydra" / "config.yaml").write_text((source / ".hydra" / "config.yaml").read_text())
    (bad / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(Exception) as e:
        train(compose_cfg(*SMALL, f"init_from={bad}", "epochs=1"), RunContext(tmp_path / "run"))
    assert "model.pt" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="freeze"):
        validate(compose_cfg(*SMALL, "freeze=-1"))
