"""Multi-objective `nnopt tune`: a two-objective study on tiny synthetic data returns a front that is
non-dominated (checked by brute force over its trials' own summary.json), its objectives and
directions are fixed when it is made, and `nnopt compare` / `nnopt report` show the front's numbers
as pareto.json holds them."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import yaml

from nnopt_cli.cli.tune import tune
from nnopt_cli.compare import pareto as front_view
from nnopt_cli.compare.render import fmt
from nnopt_cli.errors import ConfigError
from nnopt_cli.tune import objectives
from nnopt_cli.tune.space import load_preset
from tests.conftest import TINY, run_cli

FAST_STAGES = ["post=[prune]", "post.prune.method=structured", "post.measure.latency_repeats=1",
               "post.measure.latency_warmup=0", "post.measure.latency_batch_sizes=[1]"]
OBJECTIVES = [{"name": "best/val/acc", "direction": "maximize"}, {"name": "prune/size_bytes", "direction": "minimize"}]
PARAMS = {"model.hidden": "choice([8], [32], [128])", "optimizer.lr": "tag(log, interval(1e-5, 1e-2))",
          "post.prune.sparsity": "choice(0.0, 0.5)"}
N_TRIALS = 7


def write_preset(folder: Path, name: str = "mo", **settings) -> Path:
    path = folder / f"{name}.yaml"
    tune_section = {"objectives": OBJECTIVES, "n_trials": N_TRIALS, "sampler": {"name": "random", "seed": 0},
                    "params": PARAMS, **settings}
    path.write_text(yaml.safe_dump({"tune": tune_section}))
    return path


def number_in(summary: dict, name: str) -> float:
    """An objective's value read straight from summary.json, independently of the code under test."""
    if name == "prune/size_bytes":
        (stage,) = [s for s in summary["stages"] if s["name"] == "prune"]
        return stage["after"]["size_bytes"]
    return summary[name]


def dominates(a: list[float], b: list[float], signs: list[int]) -> bool:
    """a is at least as good as b in every objective and better in one (sign +1: maximize)."""
    return (all(s * x >= s * y for x, y, s in zip(a, b, signs, strict=True))
            and any(s * x > s * y for x, y, s in zip(a, b, signs, strict=True)))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("pareto")
    study_dir = root / "study"
    assert tune(str(write_preset(root)), [("dir", str(study_dir))], [*TINY, "epochs=1", *FAST_STAGES]) == 0
    return root, study_dir


def test_the_front_is_exactly_the_non_dominated_completed_trials(study, capsys):
    _, study_dir = study
    rec = json.loads((study_dir / "pareto.json").read_text())
    assert rec["objectives"] == OBJECTIVES
    signs = [1 if o["direction"] == "maximize" else -1 for o in OBJECTIVES]
    values = {}
    for n in range(N_TRIALS):
        summary = json.loads((study_dir / str(n) / "summary.json").read_text())
        assert summary["status"] == "completed"
        values[n] = [number_in(summary, o["name"]) for o in OBJECTIVES]
    front = {m["trial"] for m in rec["front"]}
    assert {t["trial"] for t in rec["trials"]} == set(values)
    for t in rec["trials"]:  # what the study was told is what the run folders hold
        assert t["values"] == values[t["trial"]] and t["on_front"] == (t["trial"] in front)
    for n in front:  # no trial dominates a front member
        assert not any(dominates(values[o], values[n], signs) for o in values if o != n), n
    for n in set(values) - front:  # every other trial is dominated by a front member
        assert any(dominates(values[m], values[n], signs) for m in front), n
    assert len(front) >= 2 and len(front) < N_TRIALS  # both sides of the check were exercised
    for m in rec["front"]:  # each member says how to retrain it
        cfg = yaml.safe_load((study_dir / str(m["trial"]) / ".hydra" / "config.yaml").read_text())
        assert cfg["optimizer"]["lr"] == m["params"]["optimizer.lr"]
        assert f"optimizer.lr={m['params']['optimizer.lr']!r}" in m["retrain"]
    best = json.loads((study_dir / "best.json").read_text())
    assert best["best_trials"] == sorted(front) and best["pareto"] == "pareto.json"
    assert (study_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and rec["plot"] == "pareto.png"


def test_directions_and_objectives_are_fixed_when_the_study_is_made(study, capsys):
    from nnopt_cli.cli.tune import run

    root, study_dir = study
    journal = (study_dir / "study.journal").read_bytes()
    flipped = [{**OBJECTIVES[0]}, {**OBJECTIVES[1], "direction": "maximize"}]
    other = [OBJECTIVES[0], {"name": "prune/flops", "direction": "minimize"}]
    made = f"the study in {study_dir} was made"
    for given, message in [(flipped, f"invalid config: tune.objectives='maximize best/val/acc and maximize "
                                     f"prune/size_bytes': {made} to maximize best/val/acc and minimize "
                                     "prune/size_bytes; rerun it as it was made"),
                           (other, f"{made} with another objective"),
                           (None, f"invalid config: tune.direction='maximize': {made} to maximize and minimize "
                                  "several objectives")]:
        single = {"objective": "best/val/acc", "direction": "maximize"} if given is None else {}
        preset = write_preset(root, "mo_rerun", objectives=given, study_name="mo", **single)
        with pytest.raises(SystemExit) as e:
            run([f"hparams_search={preset}", f"tune.dir={study_dir}", *TINY, "epochs=1", *FAST_STAGES])
        err = capsys.readouterr().err.strip()
        assert e.value.code != 0 and err.startswith(f"nnopt: error: {message}") and "\n" not in err, err
    assert (study_dir / "study.journal").read_bytes() == journal  # nothing was added to the study


def front_rows(text: str, heading: str) -> list[list[str]]:
    """The Markdown table after `heading` in `text`, as cells."""
    after = text[text.index(heading):]
    lines = [ln for ln in after.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_compare_and_report_show_the_front_as_pareto_json_holds_it(study, capsys, tmp_path):
    from nnopt_cli.cli.compare import run as compare
    from nnopt_cli.cli.report import run as report

    _, study_dir = study
    rec = json.loads((study_dir / "pareto.json").read_text())
    expected = [[str(m["trial"]), *(fmt(m["params"][k]) for k in PARAMS), *(fmt(v) for v in m["values"])]
                for m in rec["front"]]
    compare([str(study_dir), "--format", "markdown"])
    out = capsys.readouterr().out
    assert f"## Pareto front of study mo ({study_dir}): {len(rec['front'])} of {N_TRIALS} completed trials" in out
    section = out[out.index("## Pareto front"):]
    assert section.splitlines()[2].split("|")[1:-1] == [f" {c} " for c in ["trial", *PARAMS, *objectives_of(rec)]]
    assert front_rows(out, "## Pareto front") == expected
    report([str(study_dir), "-o", str(tmp_path / "r.md")])
    md = (tmp_path / "r.md").read_text()
    assert front_rows(md, "## Pareto front") == expected
    report([str(study_dir), "-o", str(tmp_path / "r.html")])
    page = (tmp_path / "r.html").read_text()
    front_html = page[page.index("<h2>Pareto front</h2>"):]
    front_html = front_html[:front_html.index("</table>")]
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", r) for r in front_html.split("<tr>")[2:]]
    assert rows == [[html.escape(c) for c in row] for row in expected]


def objectives_of(rec: dict) -> list[str]:
    return [o["name"] for o in rec["objectives"]]


def test_a_front_that_no_longer_matches_its_run_folders_is_pointed_out(study, tmp_path):
    import shutil

    _, study_dir = study
    copy = tmp_path / "copy"
    shutil.copytree(study_dir, copy, ignore=shutil.ignore_patterns(".locks"))
    member = json.loads((copy / "pareto.json").read_text())["front"][0]["trial"]
    summary_path = copy / str(member) / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["best/val/acc"] = 0.123  # the run was changed after the study (retrained by hand, say)
    summary_path.write_text(json.dumps(summary))
    from nnopt_cli.compare.discover import discover

    fronts, problems = front_view.find([copy], discover([copy]))
    assert not problems and len(fronts) == 1
    assert any(n.startswith(f"trial {member}: best/val/acc is 0.123 in its summary.json") for n in fronts[0].notes)


@pytest.mark.parametrize("content, why", [
    ("not json", "not valid JSON"),
    (json.dumps({"objectives": [{"name": "a", "direction": "maximize"}, {"name": "b", "direction": "up"}],
                 "front": [], "trials": []}), "'objectives' is not a list"),
    (json.dumps({"objectives": OBJECTIVES, "front": [{"trial": 0, "values": ["1", 2], "params": {}}],
                 "trials": []}), "'front' is not a list of {trial, values}"),
])
def test_a_malformed_pareto_json_is_a_warning_not_a_table(content, why, tmp_path):
    (tmp_path / "pareto.json").write_text(content)
    front, problem = front_view.read(tmp_path)
    assert front is None and why in problem


# ---------------------------------------------------------------------------- settings, one line each


def preset_file(tmp_path: Path, tune_section: dict) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"tune": {"params": {"optimizer.lr": "interval(0.01, 0.1)"}, **tune_section}}))
    return str(path)


def test_objectives_as_a_list_or_a_mapping_and_post_names():
    as_map = objectives.parse({"objectives": {"best/val/acc": "maximize", "post.quantize.size_bytes": "minimize"}})
    as_list = objectives.parse({"objectives": [{"name": "best/val/acc", "direction": "maximize"},
                                               {"name": "quantize/size_bytes", "direction": "minimize"}]})
    assert as_map == as_list and [o.name for o in as_list] == ["best/val/acc", "quantize/size_bytes"]
    summary = {"best/val/acc": 0.9, "stages": [{"name": "quantize", "after": {"size_bytes": 120, "test/acc": 0.8,
                                                                              "latency_ms": {"1": 0.5}}}]}
    assert [objectives.value_of(summary, n) for n in ("best/val/acc", "quantize/size_bytes", "quantize/test/acc",
                                                      "quantize/latency_ms.1", "prune/size_bytes")] == \
        [0.9, 120.0, 0.8, 0.5, None]


@pytest.mark.parametrize("section, key, match", [
    ({"objectives": [{"name": "a", "direction": "up"}, {"name": "b", "direction": "minimize"}]},
     "tune.objectives[0].direction", "maximize or minimize"),
    ({"objectives": [{"name": "a", "direction": "maximize"}]}, "tune.objectives", "two or more objectives"),
    ({"objectives": {"a": "maximize", "post.x.a": "minimize", "x/a": "minimize"}}, "tune.objectives", "given twice"),
    ({"objectives": {"a": "maximize", "b": "minimize"}, "objective": "a"}, "tune.objectives", "either"),
    ({"objectives": {"a": "maximize", "b": "minimize"}, "pruner": {"name": "median"}}, "tune.pruner",
     "Optuna does not prune multi-objective studies"),
    ({"objectives": {"a": "maximize", "b": "minimize"}, "sampler": "cmaes"}, "tune.sampler.name", "nsga2"),
])
def test_bad_objectives_are_one_line(section, key, match, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_preset(preset_file(tmp_path, section))
    assert str(e.value).startswith(f"invalid config: {key}=") and match in str(e.value) and "\n" not in str(e.value)


def test_the_command_line_picks_one_objective_or_several(tmp_path):
    several = {"objectives": {"best/val/acc": "maximize", "test/loss": "minimize"}}
    one = load_preset(preset_file(tmp_path, several), [("objective", "test/loss"), ("direction", "minimize")])
    assert objectives.parse(one.settings) == [objectives.Objective("test/loss", "minimize")]
    many = load_preset(preset_file(tmp_path, {"objective": "test/acc", "direction": "maximize"}),
                       [("objectives", several["objectives"])])
    assert [o.name for o in objectives.parse(many.settings)] == ["best/val/acc", "test/loss"]


@pytest.mark.parametrize("objective, match", [
    ("quantize/size_bytes", "a number of a stage the trials run (post=[prune]); run post=[prune,quantize] to "
                            "measure quantize/size_bytes"),
    ("prune/size_byte", "prune/<key> with key one of"),
])
def test_a_stage_objective_the_trials_cannot_measure_is_refused_before_any_trial(objective, match, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = preset_file(tmp_path, {"objectives": {"best/val/acc": "maximize", objective: "minimize"}})
    with pytest.raises(ConfigError, match=re.escape(match)):
        tune(preset, [], [*TINY, *FAST_STAGES])
    assert not (tmp_path / "outputs").exists()


def test_the_shipped_preset_searches_compression_on_two_objectives():
    from nnopt_cli.cli.tune import check_before_trials, last_per_key

    preset = load_preset("compression_pareto")
    objs = objectives.parse(preset.settings)
    assert [(o.name, o.direction) for o in objs] == [("quantize/test/acc", "maximize"),
                                                     ("quantize/size_packed_bytes", "minimize")]
    assert preset.settings["sampler"]["name"] == "nsga2" and preset.settings["pruner"]["name"] == "none"
    cfg = check_before_trials(preset, last_per_key([*preset.base, "threads=1"]), ["threads=1"])
    from nnopt_cli.post import stage_names

    assert cfg["dataset"]["name"] == "mnist1d" and stage_names(cfg) == ["prune", "quantize"]
    assert cfg["post"]["prune"]["method"] == "structured" and cfg["post"]["quantize"]["method"] == "fake"


@pytest.mark.slow
def test_nnopt_compare_prints_the_front_of_a_study_folder(study):
    _, study_dir = study
    rec = json.loads((study_dir / "pareto.json").read_text())
    r = run_cli("compare", str(study_dir), cwd=study_dir.parent)
    assert r.returncode == 0, r.stderr
    assert f"Pareto front of study mo ({study_dir}): {len(rec['front'])} of {N_TRIALS}" in r.stdout
    r = run_cli("compare", str(study_dir), "--format", "csv", cwd=study_dir.parent)
    assert r.returncode == 0 and "Pareto front" not in r.stdout and f"see {study_dir / 'pareto.json'}" in r.stderr


def test_a_pareto_json_that_is_not_a_regular_file_is_refused_without_reading(tmp_path):
    import os

    os.mkfifo(tmp_path / "pareto.json")  # opening a FIFO to read would wait for a writer forever
    front, problem = front_view.read(tmp_path)
    assert front is None and "regular file" in problem


def test_a_point_the_sampler_proposed_twice_is_named_under_the_front(tmp_path):
    members = [{"trial": t, "params": p, "values": v} for t, p, v in
               [(0, {"a": 1, "b": [8]}, [0.5, 10]), (3, {"a": 2, "b": [8]}, [0.4, 5]), (5, {"b": [8], "a": 1}, [0.5, 10])]]
    front = front_view.Front(tmp_path, "s", OBJECTIVES, members, n_trials=6)
    t = front_view.table(front)
    assert [r["trial"] for r in t.rows] == [0, 3, 5] and [r["best/val/acc"] for r in t.rows] == [0.5, 0.4, 0.5]
    assert t.notes == ["trial 5 repeats the parameters of trial 0"]


def test_three_objectives_give_the_front_as_a_table_and_no_plot(tmp_path):
    import optuna

    from nnopt_cli.tune import pareto
    from nnopt_cli.tune.study import StudyFolder

    preset = load_preset(preset_file(tmp_path, {"objectives": {"a": "maximize", "b": "minimize", "c": "minimize"}}))
    objs = objectives.parse(preset.settings)
    study = optuna.create_study(directions=[o.direction for o in objs])
    points = [(1.0, 5.0, 5.0), (2.0, 5.0, 5.0), (0.5, 1.0, 9.0), (0.5, 2.0, 9.0), (0.1, 9.0, 0.5)]
    for i, v in enumerate(points):
        study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 0.01 + i / 100}, values=list(v),
                                                  distributions=preset.distributions))
    folder = StudyFolder(tmp_path / "study")
    rec = pareto.record(study, objs, preset, [], folder, {"completed": len(points)})
    pareto.write(folder, rec)
    assert [m["trial"] for m in rec["front"]] == [1, 2, 4]  # 0 is beaten by 1, 3 by 2
    assert rec["plot"] is None and rec["plot_note"].startswith("3 objectives: the front is the table")
    assert not (folder.path / "pareto.png").exists()
    front, why = front_view.read(folder.path)
    assert why is None and [r["trial"] for r in front_view.table(front).rows] == [1, 2, 4]
