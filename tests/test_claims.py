"""The claims ledger (benchmarks/claims.py, conf/experiment/claims/): every preset composes and
validates for every value it sweeps, its expectations name groups it runs, and the ledger's verdicts
are compare's own, read from `nnopt compare --format json` on hand-made runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks import claims as ledger
from nnopt_cli.cli.compare import run as compare_main
from nnopt_cli.run.tools import compose_config
from tests.compare.test_compare_stats import write_run

CLAIMS = ledger.claims()


def swept(name: str) -> dict[str, list[str]]:
    """The preset's sweep: key -> its values, as the command line spells them."""
    preset = yaml.safe_load((ledger.PRESETS / f"{name}.yaml").read_text())
    params = preset["hydra"]["sweeper"]["params"]
    return {k: [v.strip() for v in str(values).split(",")] for k, values in params.items()}


def test_the_ledger_covers_the_articles_claims():
    names = {c.name for c in CLAIMS}
    assert len(CLAIMS) >= 18
    assert {"adam_vs_sgd", "l2", "dropout", "batch_norm_lr", "xavier_tanh", "he_relu", "relu_speed",
            "early_stopping", "bf16", "prune_finetune", "quant_bits", "distill", "transfer"} <= names


@pytest.mark.parametrize("claim", CLAIMS, ids=[c.name for c in CLAIMS])
def test_each_claim_runs_what_it_compares(claim):
    """The groups compare will form exist in the sweep: the baseline and every expected group are
    values of the --group-by key, and the compare line reads the preset's own sweep folder."""
    sweep = swept(claim.name)
    assert claim.compare[2] == f"outputs/claims/{claim.name}"
    assert set(sweep["seed"]) >= {str(s) for s in range(5)}  # five seeds or more per group
    (key,) = claim.group_by

    def spelled(v: str) -> str:  # as compare spells a group: 0.0 is 0
        try:
            return format(float(v), "g")
        except ValueError:
            return v

    values = [spelled(v) for v in sweep[key]]
    assert spelled(claim.baseline) in values
    for group, _ in claim.expect:
        assert spelled(group) in values and spelled(group) != spelled(claim.baseline)


@pytest.mark.parametrize("claim", CLAIMS, ids=[c.name for c in CLAIMS])
def test_each_preset_composes_and_validates_for_every_value(claim, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if claim.before:  # the source run the sweep starts from must exist to validate init_from
        Path(claim.before[-1].split("=", 1)[1]).mkdir(parents=True)
    sweep = swept(claim.name)
    for key, values in sweep.items():
        if key == "seed":
            continue
        for v in values:
            if key == "init_from" and v != "null":
                continue  # a run folder: validated when the ledger trains it
            cfg = compose_config([f"+experiment=claims/{claim.name}", f"{key}={v}", "seed=0"])
            assert cfg["skip_completed"] is True and cfg["checkpoint"]["keep"] == "none"


def test_read_claim_refuses_a_preset_without_its_expectation(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("# Claim: something\n#   nnopt compare outputs/claims/x --group-by a --baseline b\n")
    with pytest.raises(ValueError, match="Expect"):
        ledger.read_claim(p)
    p.write_text("# Claim: c\n# Expect: adam faster\n#   nnopt compare outputs/claims/x --group-by a --baseline b\n")
    with pytest.raises(ValueError, match="better\\|worse\\|same"):
        ledger.read_claim(p)


@pytest.mark.parametrize("expected, verdict, says", [
    ("better", "better", "supported"), ("better", "worse", "not supported"),
    ("better", "not resolved", "not resolved"), ("worse", "worse", "supported"),
    ("worse", "better", "not supported"), ("same", "not resolved", "not resolved"),
    ("same", "worse", "not supported"), ("same", "better", "supported"),
])
def test_ledger_verdict_maps_compares_verdict(expected, verdict, says):
    assert ledger.ledger_verdict(expected, verdict) == says


def test_ledger_rows_are_compares_numbers_and_verdicts(tmp_path, capsys):
    """Hand-made runs: adam clearly better than sgd, rmsprop indistinguishable; each ledger row
    carries compare's own mean, P(better), p_mw and verdict for its group."""
    accs = {"sgd": [0.50, 0.51, 0.52, 0.53, 0.54], "adam": [0.70, 0.71, 0.72, 0.73, 0.74],
            "rmsprop": [0.49, 0.55, 0.50, 0.54, 0.52]}
    for opt, values in accs.items():
        for seed, acc in enumerate(values):
            write_run(tmp_path / f"{opt}-{seed}", opt, seed, [acc - 0.1, acc], test_acc=acc)
    claim = ledger.Claim("made_up", "adam beats sgd", [("adam", "better"), ("rmsprop", "better")],
                         ["nnopt", "compare", str(tmp_path), "--group-by", "optimizer", "--baseline", "sgd",
                          "--metric", "test/acc"], [])
    try:
        compare_main([*claim.compare[2:], "--format", "json"])
    except SystemExit as e:
        assert e.code in (0, None)
    groups = json.loads(capsys.readouterr().out)
    by_opt = {g["optimizer"]: g for g in groups}
    rows = {r["group"]: r for r in ledger.rows_for(claim, groups)}
    for opt in ("adam", "rmsprop"):
        g, r = by_opt[opt], rows[opt]
        assert r["verdict"] == g["verdict"]
        assert r["ledger"] == ledger.ledger_verdict("better", g["verdict"])
        assert r["p_mw"] == f"{g['p_mw']:.3g}"
        assert r["group_value"].startswith(f"{sum(accs[opt]) / 5:.4f} ±")
    assert rows["adam"]["ledger"] == "supported" and rows["rmsprop"]["ledger"] == "not resolved"
    page = ledger.markdown([claim], list(rows.values()), {"made_up": 12.0}, "machine line")
    assert "| [made_up](#made-up) | adam vs sgd (better) | test/acc |" in page
    assert "**supported**" in page and "**not resolved**" in page and "Trained in 12 s." in page


def test_a_claim_without_runs_is_listed_as_not_run():
    claim = ledger.claims()[0]
    (row,) = ledger.rows_for(claim, [])[:1]
    assert row["ledger"].startswith("not run")
