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
])
def test_config_errors_answer_without_torch(tmp_path, override, message):
    out, modules, lines = run_logged(tmp_path, "train", override, "threads=1")
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("nnopt: error: ") and message in lines[0], lines
    no_torch(modules)
    assert not list(tmp_path.rglob("config.yaml")), "a refused config left a run folder"


@pytest.mark.slow
def test_an_error_only_a_torch_check_finds_is_still_one_line(tmp_path):
    """The checks after the torch-free ones (an optimizer's arguments) still refuse in one line,
    without a run folder; torch is imported for them."""
    out, modules, lines = run_logged(tmp_path, "train", "optimizer.lr=-1", "threads=1")
    assert out.returncode == 2
    assert len(lines) == 1 and "optimizer.lr=-1: a number > 0" in lines[0], lines
    assert "torch" in modules
    assert not list(tmp_path.rglob("config.yaml"))
