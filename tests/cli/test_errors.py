"""Errors that lead: a common misspelling is one line that names the right key or a close match,
exit status 2, and no run folder."""

from __future__ import annotations

import pytest
import torch

from nnopt_cli.cli.main import main
from tests.conftest import TINY


def refused(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("override,expected", [
    ("batch_size=256", "write batch_size.size=256"),
    ("optimizer=0.01", "write optimizer.lr=0.01"),
    ("lr=0.01", "did you mean optimizer.lr=0.01?"),
    ("optimizer=adamm", "did you mean adam?"),
    ("scheduler=cosin", "did you mean cosine?"),
    ("optimzer=adam", "did you mean optimizer=adam?"),
    ("epoch=3", "did you mean epochs=3?"),
    ("optimizer.lrr=0.1", "did you mean optimizer.lr=0.1, or +optimizer.lrr=0.1 to pass another argument"),
    ("logger=tensorboard logger.every=5", "did you mean logger.tensorboard.every=5?"),
])
def test_a_misspelt_override_points_to_the_right_key(capsys, tmp_path, monkeypatch, override, expected):
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, "train", *TINY, *override.split())
    assert err.startswith("nnopt: error: invalid config: ") and expected in err
    assert not (tmp_path / "outputs").exists()


def test_a_refused_value_leaves_no_folder_but_keeps_what_outputs_held(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, "train", *TINY, "optimizer.lr=-1")
    assert err == "nnopt: error: invalid config: optimizer.lr=-1: a number > 0\n"
    assert not (tmp_path / "outputs").exists()  # not even the empty day folder Hydra made for the run
    other = tmp_path / "outputs" / "2026-01-01" / "earlier-run"
    other.mkdir(parents=True)
    refused(capsys, "train", *TINY, "optimizer.lr=-1")
    assert [p.relative_to(tmp_path).as_posix() for p in sorted((tmp_path / "outputs").rglob("*"))] == [
        "outputs/2026-01-01", "outputs/2026-01-01/earlier-run"]


def test_an_unrelated_key_gets_no_suggestion(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "did you mean" not in refused(capsys, "train", *TINY, "zzzqqq=1")


def test_a_misspelt_command_gets_a_suggestion(capsys):
    err = refused(capsys, "comapre", "outputs")
    assert "unknown command 'comapre'; did you mean compare?" in err
    assert "did you mean" not in refused(capsys, "zzzz")


@pytest.mark.slow
def test_a_model_for_the_wrong_input_rank_names_its_twin_without_dumping_its_config(cli, tmp_path):
    out = cli("train", "dataset=mnist1d", "model=cnn", "device=cpu", "threads=1", "epochs=1")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("nnopt: error: invalid config: model='cnn': ") and "use model=cnn1d" in out.stderr
    assert "channels" not in out.stderr.split("needs")[0]  # the name, not the whole model dict
    assert [f for f in (tmp_path / "outputs").rglob("*") if f.is_file()] == []


def test_cuda_and_mps_where_there_are_none_say_what_to_use_instead():
    from nnopt_cli.errors import ConfigError
    from nnopt_cli.training.device import resolve_device

    for spec, available in (("cuda", torch.cuda.is_available()), ("cuda:0", torch.cuda.is_available()),
                            ("mps", torch.backends.mps.is_available())):
        if available:
            assert resolve_device(spec).type == spec.split(":")[0]
            continue
        with pytest.raises(ConfigError) as e:
            resolve_device(spec)
        assert str(e.value).endswith("is not available on this machine; use auto or cpu"), str(e.value)
    with pytest.raises(ConfigError, match="one of auto, cpu, cuda, cuda:N or mps"):
        resolve_device("tpu")
