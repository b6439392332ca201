"""Run names and tags (name=, tags=), `nnopt ls` and outputs/latest."""

from __future__ import annotations

import json
import os

import pytest

from nnopt_cli.cli.main import main
from nnopt_cli.loggers.tensorboard import run_hparams
from nnopt_cli.run.job import link_latest, unlink_latest
from nnopt_cli.store import layout
from nnopt_cli.store.layout import experiment_config
from tests.conftest import TINY, compose_cfg


@pytest.mark.slow
def test_named_runs_are_in_their_folder_names_ls_latest_and_compare(cli, tmp_path):
    first = cli("train", *TINY, "epochs=1", "name=base", "tags=[paper,adam]")
    second = cli("train", *TINY, "epochs=1", "name=other", "seed=1")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    folders = sorted((tmp_path / "outputs").glob("2*/*"), key=lambda p: p.name)  # outputs/<date>/<time>-...
    assert [f.name.rsplit("-", 1)[1] for f in folders] == ["base", "other"]
    summaries = [json.loads((f / layout.SUMMARY).read_text()) for f in folders]
    assert (summaries[0]["name"], summaries[0]["tags"]) == ("base", ["paper", "adam"])
    assert summaries[1]["name"] == "other" and "tags" not in summaries[1]  # no tags given
    latest = tmp_path / "outputs" / layout.LATEST
    assert latest.is_symlink() and latest.resolve() == folders[1].resolve()
    refused = cli("train", *TINY, "device=cuda:7")  # refused after Hydra made its folder: discarded
    assert refused.returncode == 2 and latest.resolve() == folders[1].resolve()

    listed = cli("ls", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)  # newest first; the link is not listed as a run of its own
    assert [(r["name"], r["tags"], r["status"]) for r in rows] == [("other", None, "completed"),
                                                                     ("base", ["paper", "adam"], "completed")]
    assert [r["test/acc"] for r in rows] == [summaries[1]["test/acc"], summaries[0]["test/acc"]]
    assert len(json.loads(cli("ls", "-n", "1", "--format", "json").stdout)) == 1

    table = cli("compare", "outputs", "--where", "tags=paper", "--format", "json")
    assert table.returncode == 0, table.stderr
    (row,) = json.loads(table.stdout)
    assert (row["name"], row["tags"], row["test/acc"]) == ("base", ["paper", "adam"], summaries[0]["test/acc"])
    named = json.loads(cli("compare", "outputs", "--where", "name=other", "--format", "json").stdout)
    assert [r["name"] for r in named] == ["other"]


def test_ls_without_runs_is_one_line(cli, tmp_path):
    out = cli("ls")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "does not exist" in out.stderr


@pytest.mark.parametrize("override,expected", [("name=my/run", "name='my/run': a run name of letters"),
                                               ("tags=paper", "tags='paper': a list: tags=[paper]"),
                                               ("tags=[ok,'a b']", "tags=['ok', 'a b']: a list of tags")])
def test_bad_names_and_tags_are_one_line_before_any_folder(capsys, tmp_path, monkeypatch, override, expected):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["train", *TINY, override])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "outputs").exists()


def test_names_and_tags_are_not_part_of_the_experiment():
    plain, named = compose_cfg(), compose_cfg("name=x", "tags=[a]")
    assert experiment_config(plain) == experiment_config(named)
    assert "name" not in experiment_config(named) and "tags" not in experiment_config(named)


def test_tensorboard_hparams_show_name_and_tags():
    hp = run_hparams({"name": "base", "tags": ["a", "b"], "seed": 0}, {"optimizer": "adam"}, [])
    assert hp["name"] == "base" and hp["tags"] == '["a", "b"]'
    assert "name" not in run_hparams({"name": None, "seed": 0}, {}, [])


def test_latest_is_replaced_and_only_made_for_the_dated_layout(tmp_path):
    a, b = tmp_path / "outputs" / "2026-01-02" / "10-00-00-1", tmp_path / "outputs" / "2026-01-03" / "09-00-00-2"
    for d in (a, b):
        d.mkdir(parents=True)
    assert link_latest(a) is None
    previous = link_latest(b)
    latest = tmp_path / "outputs" / layout.LATEST
    assert os.readlink(latest) == os.path.join("2026-01-03", "09-00-00-2") and latest.resolve() == b.resolve()
    unlink_latest(b, previous)  # b was refused and its folder discarded: back to a
    assert latest.resolve() == a.resolve()
    unlink_latest(b, None)  # no longer points at b: left alone
    assert latest.resolve() == a.resolve()
    assert [p.name for p in (tmp_path / "outputs").iterdir() if p.name.startswith(".")] == []  # no temporary left
    elsewhere = tmp_path / "mine" / "run"
    elsewhere.mkdir(parents=True)
    link_latest(elsewhere)  # hydra.run.dir=mine/run: not nnopt's layout, nothing written beside it
    assert not (tmp_path / layout.LATEST).exists() and not (tmp_path / "mine" / layout.LATEST).exists()
