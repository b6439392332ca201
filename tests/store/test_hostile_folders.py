"""A run folder is untrusted input: a corpus of hostile folders against resume=, teacher_run=,
load_stage_model and compare. Each attack is first shown to work without nnopt's checks
(so the test can fail), then shown refused with one line and nothing built, written or printed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import hydra.utils
import pytest
import yaml

from nnopt_cli.cli.compare import run as compare_run
from nnopt_cli.compare.discover import discover
from nnopt_cli.errors import ConfigError, NnoptError
from nnopt_cli.post import validate_post
from nnopt_cli.post.load import load_run_model, load_stage_model
from nnopt_cli.run.job import resume_config
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.store.checkpoint import CheckpointError, safe_load
from nnopt_cli.store.folder import RunDirError
from nnopt_cli.store.targets import UntrustedTargetError, check_config_targets, why_refused
from nnopt_cli.store.untrusted import UntrustedFileError, load_config, read_bytes
from tests.conftest import compose_cfg

SECRET = "s3cr3t-value-from-the-environment"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A real finished run folder (1 tiny epoch) with its .hydra/config.yaml."""
    run = tmp_path_factory.mktemp("good") / "run"
    cfg = compose_cfg("epochs=1")
    train(cfg, RunContext(run))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).write_bytes(f.read_bytes())
    return dst


def write_cfg(run: Path, cfg) -> None:
    text = cfg if isinstance(cfg, str) else yaml.safe_dump(cfg)
    (run / ".hydra" / "config.yaml").write_text(text)


def payload(marker: Path) -> dict:
    """A node Hydra would turn into Path(marker).write_text('pwned')."""
    return {"_target_": "pathlib.Path.write_text", "self": {"_target_": "pathlib.Path", "_args_": [str(marker)]},
            "data": "pwned"}


# where an attacker can put the payload in a config; each rebuilds a config that Hydra would build
PLACES = {
    "optimizer node": lambda c, p: c.update(optimizer=p),
    "nested in the optimizer's kwargs": lambda c, p: c["optimizer"].update(lr=p),
    "in a scheduler's _args_ list": lambda c, p: c.update(scheduler={"_target_": "torch.optim.lr_scheduler.StepLR",
                                                                     "_args_": [p], "name": "step"}),
    "a model _target_": lambda c, p: c["model"].update(_target_="pathlib.Path.write_text"),
    "an observer": lambda c, p: c.update(observers={"x": p}),
}
BAD_TARGETS = ["pathlib.Path.write_text", "os.system", "builtins.exec", "torch.optim.adam.torch.save",
               "nnopt_cli.store.folder.write_json", "torch.optim._functional.adam", "subprocess.Popen", 42,
               "torch.optim.Adam; import os", "torch.save"]


def test_the_payload_really_writes_a_file_when_built(tmp_path):
    marker = tmp_path / "pwned"
    hydra.utils.instantiate(payload(marker))
    assert marker.read_text() == "pwned"  # what the checks below must prevent


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_targets_outside_the_allow_list_are_refused(target):
    assert why_refused(target) is not None
    with pytest.raises(UntrustedTargetError, match=r"refused to build optimizer._target_=") as e:
        check_config_targets({"optimizer": {"_target_": target}}, source="x")
    assert "\n" not in str(e.value)


def test_allowed_targets_and_names_the_user_gave_pass():
    for t in ("torch.optim.Adam", "torch.optim.lr_scheduler.OneCycleLR", "torch.optim.swa_utils.SWALR",
              "nnopt_cli.optim.schedulers.warmup_cosine", "pytorch_optimizer.AdamP", "schedulefree.AdamWScheduleFree"):
        assert why_refused(t) is None, t
    check_config_targets({"model": {"_target_": "mypkg.Net"}}, trusted={"mypkg.Net"})
    for scheduler in ("warmup_cosine", "onecycle", "plateau"):  # what nnopt's own conf/ names is allowed
        check_config_targets(compose_cfg(f"scheduler={scheduler}", "optimizer=nesterov"))


@pytest.mark.parametrize("place", sorted(PLACES))
def test_resume_refuses_a_folder_naming_code_anywhere_before_building(good_run, tmp_path, place):
    run = copy_run(good_run, tmp_path / "run")
    (run / "checkpoint.pt").unlink()  # the issue's case: no checkpoint, the run would go on to "completed"
    marker = tmp_path / "pwned"
    cfg = compose_cfg("epochs=1")
    PLACES[place](cfg, payload(marker))
    write_cfg(run, cfg)
    (run / "summary.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(UntrustedTargetError, match=r"refused to build .*_target_=.* from .*config.yaml") as e:
        resume_config(run, compose_cfg(f"resume={run}"), [f"resume={run}"])
    assert "\n" not in str(e.value) and not marker.exists()


def test_resume_accepts_a_target_the_user_names_again(good_run, tmp_path):
    run = copy_run(good_run, tmp_path / "run")
    (run / "checkpoint.pt").unlink()  # its checkpoint is of another optimizer: resume would refuse it
    cfg = compose_cfg("epochs=1", "optimizer._target_=torch.optim.Adamax")
    cfg["optimizer"]["_target_"] = "torch.optim.adam.torch.save"  # refused unless named
    write_cfg(run, cfg)
    with pytest.raises(UntrustedTargetError):
        resume_config(run, compose_cfg(), [])
    over = ["optimizer._target_=torch.optim.adam.torch.save"]
    assert resume_config(run, compose_cfg(*over), over)["optimizer"]["_target_"] == "torch.optim.adam.torch.save"


def test_teacher_run_and_load_stage_model_refuse_code_before_building(good_run, tmp_path):
    run = copy_run(good_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    cfg = compose_cfg("epochs=1")
    cfg["optimizer"]["lr"] = payload(marker)
    write_cfg(run, cfg)
    with pytest.raises(UntrustedTargetError):
        load_run_model(run, (1, 28, 28), 4)
    student = compose_cfg("post=distill", f"post.distill.teacher_run={run}", "post.distill.student.hidden=[8]")
    with pytest.raises(UntrustedTargetError, match="refused to build optimizer.lr._target_"):
        validate_post(student)
    (run / "summary.json").write_text(json.dumps({"status": "completed", "stages": [
        {"name": "prune", "file": "model.pt", "input_shape": [1, 28, 28], "num_classes": 4,
         "model": {"name": "mlp", "hidden": [8], "_target_": "os.system"}}]}))
    with pytest.raises(UntrustedTargetError):
        load_stage_model(run, "model.pt")
    write_cfg(run, compose_cfg("epochs=1"))
    with pytest.raises(UntrustedTargetError, match=r"model._target_=os.system from .*summary.json"):
        load_stage_model(run, "model.pt")
    assert not marker.exists()


# ---------------------------------------------------------------------------- environment, bombs, devices

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))


def test_the_alias_bomb_is_small_and_really_explodes():
    assert len(BOMB) < 400
    node = yaml.compose(BOMB, Loader=yaml.SafeLoader)
    from nnopt_cli.store.untrusted import expanded_size

    assert expanded_size(node, 10**12) > 9**9  # what a plain load would build in memory


def test_env_interpolation_is_never_resolved_from_a_run_folder(good_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NNOPT_TEST_SECRET", SECRET)
    run = copy_run(good_run, tmp_path / "run")
    cfg = compose_cfg("epochs=1")
    cfg["optimizer"]["name"] = "${oc.env:NNOPT_TEST_SECRET}"
    cfg["model"]["note"] = "${oc.decode:'{a: 1}'}"
    write_cfg(run, cfg)
    with pytest.raises(RunDirError, match=r"calls the resolver 'oc.(env|decode)'") as e:
        resume_config(run, compose_cfg(), [])
    assert SECRET not in str(e.value)
    with pytest.raises(ConfigError, match="resolver"):
        load_run_model(run, (1, 28, 28), 4)
    # compare shows the text as written, never the value, in every format
    for fmt in ("csv", "json", "markdown", "table"):
        compare_run([str(tmp_path), "--format", fmt, "--metric", "test/acc"])
        out = capsys.readouterr()
        assert SECRET not in out.out + out.err
    (r,) = discover([tmp_path])
    assert r.config["optimizer.name"] == "${oc.env:NNOPT_TEST_SECRET}"


def test_own_key_references_still_resolve(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\nscheduler: {T_max: '${epochs}'}\n")
    assert load_config(tmp_path / "c.yaml")["scheduler"]["T_max"] == 3


def test_alias_bomb_config_is_refused_fast_everywhere(good_run, tmp_path, capsys):
    run = copy_run(good_run, tmp_path / "runs" / "bomb")
    write_cfg(run, BOMB)
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n" + BOMB.replace("\n", "\n    "))
    t0 = time.perf_counter()
    with pytest.raises(RunDirError, match="alias bomb") as e:
        resume_config(run, compose_cfg(), [])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="alias bomb"):
        load_run_model(run, (1, 28, 28), 4)
    with pytest.raises(NnoptError, match="alias bomb"):
        load_stage_model(run, "model.pt")
    compare_run([str(tmp_path / "runs"), "--format", "csv"])
    out = capsys.readouterr()
    assert "alias bomb" in out.err and "corrupt" in out.out
    assert time.perf_counter() - t0 < 20


def test_legit_anchors_still_load(tmp_path):
    (tmp_path / "c.yaml").write_text("base: &b {lr: 0.1}\nopt: *b\n")
    assert load_config(tmp_path / "c.yaml")["opt"] == {"lr": 0.1}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_dev_zero_run_files_are_refused_not_read(good_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    a = copy_run(good_run, runs / "a")
    (a / "metrics.jsonl").unlink()
    (a / "metrics.jsonl").symlink_to("/dev/zero")
    b = copy_run(good_run, runs / "b")
    (b / "summary.json").unlink()
    os.mkfifo(b / "summary.json")
    c = copy_run(good_run, runs / "c")
    (c / ".hydra" / "config.yaml").unlink()
    os.mkfifo(c / ".hydra" / "config.yaml")
    for f in (a / "metrics.jsonl", b / "summary.json", c / ".hydra" / "config.yaml"):
        with pytest.raises(UntrustedFileError, match="not a regular file"):
            read_bytes(f, 1000)
    t0 = time.perf_counter()
    compare_run([str(runs), "--format", "csv"])
    out = capsys.readouterr()
    assert "metrics.jsonl: is not a regular file" in out.err and "summary.json: is not a regular file" in out.err
    with pytest.raises(RunDirError, match="not a regular file"):
        resume_config(c, compose_cfg(), [])
    with pytest.raises(ConfigError, match="not a regular file"):
        load_run_model(c, (1, 28, 28), 4)
    (a / "model.pt").unlink()
    (a / "model.pt").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="not found"):  # not a regular file: never read
        safe_load(a / "model.pt", "model")
    assert time.perf_counter() - t0 < 20


def test_oversized_empty_and_cut_configs(good_run, tmp_path):
    run = copy_run(good_run, tmp_path / "run")
    with open(run / ".hydra" / "config.yaml", "wb") as f:
        f.truncate(5 * 2**20)  # 5 MiB of zeros: more than a config can be
    with pytest.raises(RunDirError, match="more than the"):
        resume_config(run, compose_cfg(), [])
    write_cfg(run, "")  # a disk that filled while the file was written: the defaults must not run
    with pytest.raises(RunDirError, match=r"config.yaml is corrupt \(empty\)"):
        resume_config(run, compose_cfg(), [])
    write_cfg(run, "resume: null\nskip_completed: false\n")
    with pytest.raises(RunDirError, match="it lacks epochs, seed, dataset, model, optimizer"):
        resume_config(run, compose_cfg(), [])


def test_compare_survives_non_utf8_huge_ints_and_odd_shapes(good_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    a = copy_run(good_run, runs / "a")
    summary = json.loads((a / "summary.json").read_text())
    text = json.dumps(summary).replace('"epochs": 1', '"epochs": ' + "9" * 5000)
    (a / "summary.json").write_text(text.replace('"test/acc": ', '"test/acc": 1' + "0" * 400 + ', "x": '))
    b = copy_run(good_run, runs / "b")
    (b / "metrics.jsonl").write_bytes(b'{"epoch": 1, "val/acc": 0.5, "note": "\xff\xfe"}\n')
    (b / ".hydra" / "config.yaml").write_bytes(b"epochs: 1\nname: \xff\xfe\nseed: " + b"7" * 5000 + b"\n")
    c = copy_run(good_run, runs / "c")
    s = json.loads((c / "summary.json").read_text())
    s["stages"] = 5
    (c / "summary.json").write_text(json.dumps(s))
    for fmt in ("csv", "json", "table"):
        compare_run([str(runs), "--format", fmt])
        compare_run([str(runs), "--format", fmt, "--group-by", "optimizer"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err


def test_grouped_means_say_when_values_are_nan_or_inf(good_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    values = {"a": 0.5, "b": 0.7, "c": "NaN", "d": "Infinity"}
    for seed, (name, v) in enumerate(values.items()):
        run = copy_run(good_run, runs / name)
        cfg = yaml.safe_load((run / ".hydra/config.yaml").read_text())
        cfg["seed"] = seed  # four seeds of one experiment, not one run copied four times
        (run / ".hydra/config.yaml").write_text(yaml.safe_dump(cfg))
        text = (run / "summary.json").read_text()
        summary = json.loads(text)
        summary["test/loss"] = "@"
        (run / "summary.json").write_text(json.dumps(summary).replace('"@"', str(v)))
    compare_run([str(runs), "--group-by", "optimizer", "--metric", "test/loss", "--format", "markdown"])
    out = capsys.readouterr().out
    # the mean is over the two finite runs (0.6), and the table says two were not averaged
    assert "| Adam | 4 | 0.6 ± 0.14 |" in out, out  # stdev([0.5, 0.7]) = 0.1414
    assert "test/loss: 2 of 4 run(s) of optimizer=Adam are NaN/inf, not in its mean ± std (over 2)" in out


@pytest.mark.slow
def test_cli_resume_of_a_folder_naming_code_is_one_line_and_builds_nothing(good_run, tmp_path):
    from tests.conftest import run_cli

    run = copy_run(good_run, tmp_path / "run")
    (run / "checkpoint.pt").unlink()
    marker = tmp_path / "pwned"
    cfg = compose_cfg("epochs=1")
    cfg["optimizer"] = payload(marker)
    write_cfg(run, cfg)
    (run / "summary.json").write_text(json.dumps({"status": "running"}))
    out = run_cli("train", f"resume={run}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused to build optimizer._target_=pathlib.Path.write_text" in lines[0]
    assert not marker.exists() and json.loads((run / "summary.json").read_text())["status"] == "running"
