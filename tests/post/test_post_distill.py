"""Knowledge distillation: the Hinton loss, teachers from this run or an earlier one, the baseline."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from nnopt_cli.errors import ConfigError
from nnopt_cli.post.distill import distill_loss, teacher_loss
from nnopt_cli.post.ensemble import mean_softmax
from nnopt_cli.post.load import load_stage_model
from nnopt_cli.run.recipe import RunContext, train
from nnopt_cli.run.validate import validate
from nnopt_cli.store.folder import read_metrics
from tests.conftest import compose_cfg

FAST = ["post.measure.latency_repeats=2", "post.measure.latency_warmup=0", "post.measure.latency_batch_sizes=[1,8]"]


def test_loss_is_the_weighted_sum_of_soft_and_hard_terms():
    torch.manual_seed(0)
    s, t, y = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    T = 3.0
    kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
    ce = F.cross_entropy(s, y)
    p = mean_softmax([t], T)  # one teacher: its own softmax at T
    assert distill_loss(s, p, y, T, 0.0) == pytest.approx(ce.item(), rel=1e-6)
    assert distill_loss(s, p, y, T, 1.0) == pytest.approx(T * T * kl.item(), rel=1e-5)
    assert distill_loss(s, p, y, T, 0.25) == pytest.approx(0.25 * T * T * kl.item() + 0.75 * ce.item(), rel=1e-5)
    assert distill_loss(t, p, y, T, 1.0) == pytest.approx(0.0, abs=1e-6)  # matching the teacher costs nothing


def three_teachers():
    torch.manual_seed(1)
    return [torch.nn.Linear(5, 4) for _ in range(3)]


def test_several_teachers_teach_the_mean_of_their_softmaxes():
    teachers, T = three_teachers(), 2.5
    x, out, y = torch.randn(32, 5), torch.randn(32, 4), torch.randint(0, 4, (32,))
    mean = sum(F.softmax(t(x) / T, dim=1) for t in teachers) / 3  # the soft targets, by hand
    kl = (mean * (mean.log() - F.log_softmax(out / T, dim=1))).sum(1).mean()
    assert teacher_loss(teachers, T, 1.0)(out, y, x).item() == pytest.approx(T * T * kl.item(), rel=1e-5)
    ce = F.cross_entropy(out, y)
    assert teacher_loss(teachers, T, 0.3)(out, y, x).item() == pytest.approx(
        0.3 * T * T * kl.item() + 0.7 * ce.item(), rel=1e-5)
    # and not the softmax of the mean logits, which a different target would give
    of_mean_logits = F.softmax(sum(t(x) for t in teachers) / 3 / T, dim=1)
    assert not torch.allclose(mean, of_mean_logits, atol=1e-3)


def test_hard_targets_are_the_ensembles_predictions_with_plain_cross_entropy():
    teachers = three_teachers()
    x, out = torch.randn(64, 5), torch.randn(64, 4)
    with torch.no_grad():
        labels = (sum(F.softmax(t(x), dim=1) for t in teachers) / 3).argmax(1)
    y = (labels + 1) % 4  # the dataset's labels play no part
    loss = teacher_loss(teachers, 4.0, 0.9, "hard")(out, y, x)
    assert loss.item() == pytest.approx(F.cross_entropy(out, labels).item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(out, y).item(), rel=1e-3)


def write_hydra_config(run_dir, cfg):
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")


def test_distill_from_the_trained_model_with_a_baseline(tmp_path):
    cfg = compose_cfg("post=distill", "post.distill.epochs=2", "post.distill.student.hidden=[8]", *FAST)
    summary = train(cfg, RunContext(run_dir=tmp_path))
    assert summary["status"] == "completed"
    stage = summary["stages"][0]
    assert stage["status"] == "completed" and stage["file"] == "model.student.pt"
    assert stage["teacher"]["source"] == "the model this run trained"
    assert stage["teacher"]["test/acc"] == pytest.approx(summary["test/acc"])
    for who in ("teacher", "student", "student_alone"):
        assert 0 <= stage[who]["test/acc"] <= 1
    assert stage["after"]["test/acc"] == stage["student"]["test/acc"]
    assert stage["after"]["params"] < stage["before"]["params"]
    assert stage["after"]["params"] == 784 * 8 + 8 + 8 * 10 + 10
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("stage") == "distill"]
    assert [(r["role"], r["epoch"]) for r in rows] == [("student", 1), ("student", 2),
                                                       ("student_alone", 1), ("student_alone", 2)]
    assert rows[0]["steps"] == rows[2]["steps"]  # the same budget for both students
    write_hydra_config(tmp_path, cfg)
    student = load_stage_model(tmp_path, "model.student.pt")
    assert student[1].out_features == 8


def test_teacher_trained_in_the_stage_and_teacher_from_an_earlier_run(tmp_path):
    first = tmp_path / "first"
    cfg = compose_cfg("model.hidden=[24]")
    train(cfg, RunContext(run_dir=first))
    write_hydra_config(first, cfg)
    cfg2 = compose_cfg("post=distill", f"post.distill.teacher_run={first}", "post.distill.epochs=1",
                       "post.distill.baseline=false", "model.hidden=[4]", *FAST)
    s = train(cfg2, RunContext(run_dir=tmp_path / "second"))["stages"][0]
    assert s["teacher"]["source"] == f"run {first}" and s["teacher"]["model"]["hidden"] == [24]
    assert "student_alone" not in s
    assert s["teacher"]["test/acc"] == pytest.approx(json.loads((first / "summary.json").read_text())["test/acc"])
    cfg3 = compose_cfg("post=distill", "model@post.distill.teacher=mlp_small", "post.distill.teacher_epochs=1",
                       "post.distill.epochs=1", "post.distill.baseline=false", *FAST)
    s = train(cfg3, RunContext(run_dir=tmp_path / "third"))["stages"][0]
    assert s["teacher"]["source"] == "trained in this stage" and s["teacher"]["params"] == 784 * 100 + 100 + 1010
    roles = [r.get("role") for r in read_metrics(tmp_path / "third" / "metrics.jsonl") if r.get("stage")]
    assert roles == ["teacher", "student"]


def test_distill_from_an_ensemble_of_earlier_runs(tmp_path):
    runs = []
    for i, hidden in enumerate([24, 16]):
        cfg = compose_cfg(f"model.hidden=[{hidden}]", f"seed={i}", "epochs=1")
        train(cfg, RunContext(run_dir=tmp_path / f"t{i}"))
        write_hydra_config(tmp_path / f"t{i}", cfg)
        runs.append(tmp_path / f"t{i}")
    for targets in ("soft", "hard"):
        cfg = compose_cfg("post=distill", f"post.distill.teacher_run=[{runs[0]},{runs[1]}]", "epochs=1",
                          f"post.distill.targets={targets}", "post.distill.epochs=1", "post.distill.baseline=false",
                          "model.hidden=[4]", *FAST)
        validate(cfg)
        summary = train(cfg, RunContext(run_dir=tmp_path / f"student-{targets}"))
        s = summary["stages"][0]
        assert s["status"] == "completed" and s["targets"] == targets
        assert [m["run"] for m in s["teacher"]["members"]] == [str(r) for r in runs]
        for m, r in zip(s["teacher"]["members"], runs, strict=True):
            assert m["test/acc"] == pytest.approx(json.loads((r / "summary.json").read_text())["test/acc"])
        assert s["teacher"]["params"] == (784 * 24 + 24 + 250) + (784 * 16 + 16 + 170)
    # the ensemble's accuracy: argmax of the mean of the teachers' softmaxes on the test split
    from nnopt_cli.data import load_splits
    data = load_splits(cfg["dataset"])
    with torch.no_grad():
        probs = sum(F.softmax(load_stage_model(r, "model.pt")(data.test_x), dim=1) for r in runs) / 2
    assert s["teacher"]["test/acc"] == pytest.approx((probs.argmax(1) == data.test_y).float().mean().item())


def test_teachers_of_another_dataset_are_refused_in_one_line(tmp_path):
    cfg = compose_cfg("epochs=1")
    train(cfg, RunContext(run_dir=tmp_path / "a"))
    write_hydra_config(tmp_path / "a", cfg)
    (tmp_path / "b").mkdir()
    for f in ("model.pt", "model.pt.sha256", "summary.json"):
        (tmp_path / "b" / f).write_bytes((tmp_path / "a" / f).read_bytes())
    write_hydra_config(tmp_path / "b", compose_cfg("dataset=mnist", tiny=False))  # a run of the same shapes on MNIST
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("post=distill", f"post.distill.teacher_run=[{tmp_path / 'a'},{tmp_path / 'b'}]"))
    assert err.value.key == "post.distill.teacher_run" and "dataset synthetic (it trained on mnist)" in str(err.value)
    assert "\n" not in str(err.value)
    write_hydra_config(tmp_path / "b", compose_cfg("dataset.noise=2.0"))  # another synthetic problem
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("post=distill", f"post.distill.teacher_run=[{tmp_path / 'a'},{tmp_path / 'b'}]"))
    assert "dataset settings differ" in str(err.value) and "noise" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides,key", [
    (["post.distill.temperature=0"], "post.distill.temperature"),
    (["post.distill.temperature=-2"], "post.distill.temperature"),
    (["post.distill.alpha=1.5"], "post.distill.alpha"),
    (["post.distill.alpha=-0.1"], "post.distill.alpha"),
    (["post.distill.epochs=0"], "post.distill.epochs"),
    (["post.distill.student.hidden=[0]"], "post.distill.student.hidden"),
    (["post.distill.teacher_run=/nonexistent/run"], "post.distill.teacher_run"),
    (["post.distill.teacher_run=[]"], "post.distill.teacher_run"),
    (["post.distill.targets=both"], "post.distill.targets"),
])
def test_bad_distill_settings_fail_before_training(overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("post=distill", *overrides))
    assert err.value.key == key and "\n" not in str(err.value)


def test_a_teacher_run_without_a_usable_model_is_refused(tmp_path):
    run = tmp_path / "run"
    write_hydra_config(run, compose_cfg())
    with pytest.raises(ConfigError, match="model.pt"):  # no weights at all
        validate(compose_cfg("post=distill", f"post.distill.teacher_run={run}"))
    (run / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="usable model"):
        validate(compose_cfg("post=distill", f"post.distill.teacher_run={run}"))
    torch.save({"0.weight": torch.zeros(3, 3)}, run / "model.pt")  # another architecture's weights
    with pytest.raises(ConfigError, match="usable model"):
        validate(compose_cfg("post=distill", f"post.distill.teacher_run={run}"))
