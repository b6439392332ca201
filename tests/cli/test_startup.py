"""`nnopt train --help`, `--cfg job` and the config errors found without torch answer before torch
is imported: the real command runs with Python's import log on (PYTHONPROFILEIMPORTTIME, the
`-X importtime` of a subprocess) and no torch module may appear in it."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


def imported_modules(stderr: str) -> set[str]:
    """The modules Python's import log names (`import time: self | cumulative | name`)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")
            and line.count("|") == 2}


def other_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("import time:")]


def run_logged(tmp_path, *args: str):
    out = run_cli(*args, cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    modules = imported_modules(out.stderr)
    assert "hydra" in modules, "the import log is missing: the check below would pass without meaning"
    return out, modules, other_lines(out.stderr)


def no_torch(modules: set[str]) -> None:
    torch_modules = sorted(m for m in modules if m == "torch" or m.startswith("torch."))
    assert not torch_modules, f"torch imported: {torch_modules[:5]}"
    # nor joblib (and numpy with it), which Hydra's scan of the launcher plugins would import
    assert "joblib" not in modules and "numpy" not in modules


@pytest.mark.slow
@pytest.mark.parametrize("args, shown", [
    (["--help"], "optimizer: "),              # Hydra's help lists the config groups
    (["--cfg", "job"], "optimizer:"),         # the composed config, printed
])
def test_help_and_cfg_answer_without_torch(tmp_path, args, shown):
    out, modules, _ = run_logged(tmp_path, "train", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert shown in out.stdout
    no_torch(modules)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("optimizer=adamm", "did you mean adam?"),                 # a group option that does not exist
    ("optimizer.lrr=0.01", "optimizer.lrr"),                   # a key the config does not have
    ("epochs=0", "epochs=0: an integer in [1, "),              # a value out of range
    ("batch_size.size=0", "batch_size.size=0"),                # a group's value out of range
    ("+hparams_search=mnist_optuna", "nnopt tune"),            # a search preset given to train
    # each group's values
    ("optimizer.lr=-1", "optimizer.lr=-1: a number > 0"),
    ("optimizer=momentum optimizer.momentum=1", "optimizer.momentum=1: a number >= 0 and < 1"),
    ("optimizer=lbfgs precision=fp16", "optimizer.step='closure'"),
    ("grad_clip=norm grad_clip.max_norm=0", "grad_clip.max_norm=0: a number > 0"),
    ("early_stopping.enabled=true early_stopping.patience=0", "early_stopping.patience=0: an integer >= 1"),
    ("regularizer=l2 regularizer.l2.weight=-1", "regularizer.l2.weight=-1: a number >= 0"),
    ("scheduler=step scheduler.gamma=0", "scheduler.gamma=0: a number > 0 and <= 1"),
    ("averaging=ema averaging.decay=1", "averaging.decay=1: a number > 0 and < 1"),
    ("precision=fp64", "precision='fp64': one of fp32, bf16, fp16"),
    ("dataset=mnist1d dataset.val_size=0", "dataset.val_size=0: an integer >= 1"),
    ("dataset=mnist1d dataset.val_size=100000", "dataset.val_size=100000: an integer in [1, 3999]"),
    ("dataset=regression loss=cross_entropy", "mse or huber for dataset=regression"),
    ("dataset=regression loss=mse post=quantize", "null or prune for dataset=regression"),
    ("batch_size.accumulate=0", "batch_size.accumulate=0"),
    ("loss=label_smoothing loss.smoothing=1.5", "loss.smoothing=1.5: a number >= 0 and < 1"),
    ("post=prune post.prune.sparsity=2", "post.prune.sparsity=2: a number >= 0 and < 1"),
    ("post=quantize post.quantize.bits=9", "post.quantize.bits=9: an integer in [1, 8]"),
    ("post=[quantize,prune]", "quantize must be the last stage"),
    ("post=distill post.distill.alpha=2", "post.distill.alpha=2: a number >= 0 and <= 1"),
    ("post=prune post.measure.latency_repeats=0", "post.measure.latency_repeats=0: an integer >= 1"),
])
def test_config_errors_answer_without_torch(tmp_path, override, message):
    out, modules, lines = run_logged(tmp_path, "train", *override.split(), "threads=1")
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("nnopt: error: ") and message in lines[0], lines
    no_torch(modules)
    assert not list(tmp_path.rglob("config.yaml")), "a refused config left a run folder"


@pytest.mark.slow
def test_an_error_only_a_torch_check_finds_is_still_one_line(tmp_path):
    """The checks after the torch-free ones (the arguments an optimizer class takes) still refuse
    in one line, without a run folder; torch is imported for them."""
    out, modules, lines = run_logged(tmp_path, "train", "+optimizer.betass=[0.9,0.99]", "threads=1")
    assert out.returncode == 2
    assert len(lines) == 1 and "takes no betass" in lines[0], lines
    assert "torch" in modules
    assert not list(tmp_path.rglob("config.yaml"))
