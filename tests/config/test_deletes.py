"""`~group.key` and `~group` (Hydra's delete): a key nnopt reads is refused in one line before any
folder, for every key of every option in conf/ and of conf/train.yaml; what is not refused validates."""

from __future__ import annotations

import functools
import re

import pytest
import yaml

from nnopt_cli.config import conf_dir
from nnopt_cli.config.overrides import DeletedKeyError, check_deletes, group_options
from nnopt_cli.errors import NnoptError
from nnopt_cli.run.tools import compose_config
from tests.conftest import TINY, compose_cfg

NOT_RUN_GROUPS = ("hydra", "experiment", "hparams_search")  # launchers, sweep presets, nnopt tune presets


def _keys(node: dict, prefix: str = ""):
    for k, v in node.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _keys(v, f"{prefix}{k}.")


def _package(path, group: str) -> str:
    m = re.match(r"# @package (\S+)", path.read_text())
    package = m.group(1) if m else group.replace("/", ".")
    return "" if package == "_global_" else package


def every_option_key() -> list[tuple[str, str]]:
    """(group=option or "" for conf/train.yaml, the dotted key) for every key each file defines."""
    root, cases = conf_dir(), []
    for path in sorted(root.rglob("*.yaml")):
        group = str(path.parent.relative_to(root))
        if group.startswith(NOT_RUN_GROUPS):
            continue
        node = yaml.safe_load(path.read_text()) or {}
        node = {k: v for k, v in node.items() if k not in ("defaults", "hydra")}
        if group == ".":
            cases += [("", k) for k in _keys(node)]
            continue
        package = _package(path, group)
        cases += [(f"{group}={path.stem}", f"{package}.{k}" if package else k) for k in _keys(node)]
    return cases


CASES = every_option_key()


@functools.cache
def _compose(overrides: tuple[str, ...]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("choice,key", CASES, ids=[f"{c or 'train'}:~{k}" for c, k in CASES])
def test_deleting_any_key_of_any_option_is_refused_in_one_line_or_validates(choice, key):
    chosen = [choice] if choice else []
    try:  # the check itself, with one composition per option (cached)
        check_deletes([*chosen, f"~{key}"], lambda overrides: _compose(tuple(overrides)))
    except DeletedKeyError as e:
        message = str(e)
        assert message.startswith(f"invalid config: ~{key}: ") and "\n" not in message
        assert any(w in message for w in ("instead", "leave out", "choose an option"))
        return
    tiny = [t for t in TINY if not (choice.startswith("dataset=") and t.startswith("dataset."))]
    compose_config([*tiny, *chosen, f"~{key}"])  # not refused: then the run config is valid


def test_every_kind_of_key_is_covered():
    keys = {k for _, k in CASES}
    assert {"early_stopping.patience", "diagnostics.every", "regularizer.l2", "scheduler.shape",
            "logger.tensorboard.flush_secs", "loss.name", "model.hidden", "optimizer.step", "batch_size.size",
            "post.prune.sparsity", "optimizer.wrapper.k", "epochs"} <= keys
    assert len(CASES) > 300


@pytest.mark.parametrize("group", sorted(group_options()))
def test_deleting_a_group_is_refused_unless_its_default_is_null(group):
    options, null_ok = group_options()[group]
    if group.startswith(NOT_RUN_GROUPS):
        return
    if null_ok:
        compose_config([*TINY, f"~{group}"])
        return
    with pytest.raises(DeletedKeyError, match=rf"^invalid config: ~{group}: nnopt needs the {group} group; "
                                              rf"choose an option with {group}=NAME \(one of "):
        compose_config([*TINY, f"~{group}"])


@pytest.mark.parametrize("overrides,message", [
    (["logger=tensorboard", "~logger.flush_secs"],
     "~logger.flush_secs: no such key to delete (keys of logger: tensorboard); did you mean "
     "~logger.tensorboard.flush_secs?"),
    (["optimizer=adam", "~optimizer.step"],
     "~optimizer.step: no such key to delete (keys of optimizer: _partial_, _target_, betas, lr, weight_decay)"),
    (["~name"], "~name: name is null (unset) already: leave out ~name"),
    (["batch_size.size=32", "~batch_size.size"],
     "~batch_size.size: deleted, but nnopt reads this key; set a value instead, e.g. batch_size.size=32"),
    (["regularizer=l2", "~regularizer.l2"],
     "~regularizer.l2: deleted, but nnopt reads this key; set its keys instead (regularizer.l2.weight)"),
    (["~loss.name"], "~loss.name: deleted, but nnopt reads this key; choose another option of the group "
                     "instead (loss=NAME)"),
])
def test_the_message_says_what_to_write_instead(overrides, message):
    with pytest.raises(NnoptError) as e:
        compose_config([*TINY, *overrides])
    assert str(e.value) == f"invalid config: {message}"


def test_deleting_the_arguments_a_newly_chosen_class_does_not_take_still_works():
    cfg = compose_config([*TINY, "optimizer=adam", "optimizer._target_=torch.optim.Rprop", "~optimizer.betas",
                          "~optimizer.weight_decay"])
    assert "betas" not in cfg["optimizer"]
    cfg = compose_config([*TINY, "optimizer=sam", "optimizer.base_optimizer._target_=torch.optim.AdamW",
                          "optimizer.lr=0.001", "~optimizer.momentum"])
    assert "momentum" not in cfg["optimizer"]
    # without another class, the same delete is refused: SGD would silently run without momentum
    with pytest.raises(DeletedKeyError, match="~optimizer.momentum: deleted"):
        compose_config([*TINY, "optimizer=sam", "~optimizer.momentum"])
    assert compose_cfg("optimizer=sam")["optimizer"]["momentum"] == 0.9


@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", [
    (["~early_stopping.patience"], "~early_stopping.patience: deleted, but nnopt reads this key; set a value "
                                   "instead, e.g. early_stopping.patience=3"),
    (["diagnostics=basic", "~diagnostics.every"], "~diagnostics.every: deleted"),
    (["scheduler=wsd", "~scheduler.shape"], "~scheduler.shape: deleted"),
    (["~model.hidden"], "~model.hidden: deleted, but nnopt reads this key; set a value instead, e.g. "
                        "model.hidden=[256]"),
    (["~optimizer"], "~optimizer: nnopt needs the optimizer group"),
])
def test_a_refused_delete_is_one_line_exit_2_and_no_folder(cli, tmp_path, overrides, message):
    r = cli("train", *TINY, *overrides)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"nnopt: error: invalid config: {message}") and r.stderr.count("\n") == 1
    assert not (tmp_path / "outputs").exists()
