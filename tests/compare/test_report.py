"""`nnopt report`: the HTML and Markdown study on hand-made run folders with known numbers, read back
with a parser: figures embedded, the table equal to `nnopt compare --format json`, hostile text escaped."""

from __future__ import annotations

import base64
import html
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread

from nnopt_cli.cli.report import run as report_main
from tests.compare.test_compare import stage_run
from tests.compare.test_compare_stats import compare, compare_json
from tests.compare.test_compare_workloads import edit, workload_runs
from tests.conftest import run_cli

HOSTILE = "<script>alert(1)</script>"
OPTIONS = ["--group-by", "optimizer", "--metric", "test/acc", "--baseline", "sgd", "--target", "val/acc=0.96",
           "--bootstrap", "1000"]
PNG = b"\x89PNG\r\n\x1a\n"


def report(capsys, *args: str) -> tuple[int, str]:
    try:
        report_main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


class Page(HTMLParser):
    """The tags, the text and the tables (rows of cell texts) of an HTML page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def study(tmp_path) -> Path:
    """Three seeds of adam and sgd on MNIST and MNIST-1D, with their commands and versions; one run's
    folder name, override and recorded version are hostile HTML."""
    runs = workload_runs(tmp_path / "runs")
    for d in sorted(p for p in runs.iterdir() if p.is_dir()):
        opt, seed = d.name.split("-")[1][:-1], d.name[-1]
        overrides = [f"optimizer={opt}", f"seed={seed}", f"dataset={d.name.split('-')[0]}"]
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        edit(d, "summary.json", lambda s: s.update(versions={"nnopt": "0.1.0", "torch": "2.5.1"}, git_sha="abc123"))
    hostile = runs / "mnist-sgd2"
    (hostile / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"+note={HOSTILE}"]))
    edit(hostile, "summary.json", lambda s: s["versions"].update(nnopt=HOSTILE))
    hostile.rename(runs / f"mnist-sgd2{HOSTILE.replace('/', '')}")
    return runs


def numbers(text: str) -> list[float]:
    return [float(t) for t in re.findall(r"-?inf|-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", text)]


def assert_cell_equals_json(cell: str, header: str, rec: dict) -> None:
    """A cell shows the json record's values: mean ± std, value [lo, hi], a number or a text."""
    if f"{header}_mean" in rec:
        want = [rec[f"{header}_mean"], rec[f"{header}_std"]]
        rel = [5e-4, 5e-2]  # 4 significant digits; a spread has 2
    elif f"{header}_lo" in rec:
        want, rel = [rec[header], rec[f"{header}_lo"], rec[f"{header}_hi"]], [5e-4] * 3
    else:
        want, rel = [rec[header]], [5e-4]
    if cell in ("–", "never"):  # no value, or a median time that is inf (null in json)
        assert all(w is None for w in want[:1]), (header, cell, rec)
        return
    if all(isinstance(w, str) for w in want):
        assert cell == want[0], (header, cell, rec)
        return
    got = numbers(cell)
    want = [w for w in want if w is not None or got.count(float("inf"))]
    assert len(got) == len(want), (header, cell, want)
    for g, w, r in zip(got, want, rel, strict=False):
        assert g == (float("inf") if w is None else pytest.approx(w, rel=r)), (header, cell, want)


def test_html_report_is_one_file_with_the_compare_table_embedded_figures_and_escaped_text(study, tmp_path,
                                                                                          capsys):
    out = tmp_path / "share" / "study.html"
    code, err = report(capsys, str(study), *OPTIONS, "-o", str(out))
    assert code == 0, err
    assert f"wrote {out} (3 figures)" in err
    text = out.read_text()
    page = Page(text)

    # self-contained: no script, no link, nothing fetched; every image a PNG inside the file
    names = [t for t, _ in page.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", text)
    imgs = [a for t, a in page.tags if t == "img"]
    assert [a["alt"] for a in imgs] == ["Curves", "Time to target", "Performance profile"]
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        data = base64.b64decode(a["src"].split(",", 1)[1], validate=True)
        assert data.startswith(PNG) and imread(io.BytesIO(data)).shape[0] > 100

    # the table is compare's for the same options (--stats added, as a report does for groups)
    want, _ = compare_json(capsys, str(study), *OPTIONS, "--stats")
    (table,) = page.tables
    header, rows = table[0], table[1:]
    assert header[:4] == ["dataset", "optimizer", "runs", "test/acc"] and "test/acc_iqm" in header
    assert "verdict" in header and "target_steps" in header
    assert len(rows) == len(want) == 4
    for cells, rec in zip(rows, want, strict=True):
        for h, cell in zip(header, cells, strict=True):
            assert_cell_equals_json(cell, h, rec)
    mnist_adam = next(r for r in want if (r["dataset"], r["optimizer"]) == ("mnist", "adam"))
    assert mnist_adam["test/acc_mean"] == pytest.approx((0.980 + 0.982 + 0.971) / 3)

    words = " ".join(page.text)
    assert "dataset=mnist: 6 runs, 6 completed" in words and "dataset=mnist1d: 6 runs, 6 completed" in words
    assert ("dataset=mnist optimizer=adam against sgd on test/acc: not resolved (P(better) = "
            f"{mnist_adam['P(better)']:.4g} [") in words
    assert f"Seeds per group that would resolve it: {mnist_adam['seeds to resolve']}." in words
    assert "LR sensitivity: no optimizer was run at more than one optimizer.lr" in words
    assert "Compression tradeoffs: no completed run has post-training stages" in words
    assert "mnist-adam0: nnopt train optimizer=adam seed=0 dataset=mnist" in words
    assert "nnopt 0.1.0, torch 2.5.1, git abc123: 11 runs" in words

    # a hostile folder name, override and version read as text, never as markup
    assert f"nnopt train '+note={HOSTILE}'" in words and f"nnopt {HOSTILE}, torch 2.5.1" in words
    assert "<script" not in text and "&lt;script&gt;" in text


def test_markdown_report_has_compares_markdown_table_and_its_figures_beside_it(study, tmp_path, capsys):
    out = tmp_path / "study.md"
    code, err = report(capsys, str(study), *OPTIONS, "-o", str(out))
    assert code == 0, err
    text = out.read_text()
    code, table_md, _ = compare(capsys, str(study), *OPTIONS, "--stats", "--format", "markdown")
    assert code == 0
    table_lines = [line for line in table_md.splitlines() if line.startswith("|")]
    assert len(table_lines) == 6 and "\n".join(table_lines) in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["study-curves.png", "study-target.png", "study-profile.png"]
    for name in links:
        assert (tmp_path / name).read_bytes().startswith(PNG)
    outside_code = re.sub(r"(?ms)^(`{3,})\n.*?^\1$", "", text)  # a code block shows HTML as text
    assert "<script" not in outside_code and f"nnopt {html.escape(HOSTILE)}, torch 2.5.1" in outside_code
    assert f"'+note={HOSTILE}'" in text


def test_per_run_report_escapes_config_values_and_shows_tradeoffs(tmp_path, capsys):
    for seed in range(2):
        stage_run(tmp_path / "runs" / f"r{seed}", seed, [("prune", 400_000, 0.96, 0.9), ("quantize", 100_000, 0.95, 0.5)])
    edit(tmp_path / "runs" / "r1", ".hydra/config.yaml", lambda c: c.update(note=HOSTILE))
    out = tmp_path / "r.html"
    code, err = report(capsys, str(tmp_path / "runs"), "-o", str(out))
    assert code == 0, err
    page = Page(out.read_text())
    assert [a["alt"] for t, a in page.tags if t == "img"] == ["Curves", "Compression tradeoffs"]
    (table,) = page.tables
    header = table[0]
    assert header[:3] == ["run", "seed", "note"] and "prune/size_bytes" in header
    assert table[2][header.index("note")] == HOSTILE  # the text, unescaped by the parser: it was escaped
    assert "script" not in [t for t, _ in page.tags]
    assert "Time to target: no --target given (e.g. --target val/acc=0.97)" in " ".join(page.text)
    want = compare_json(capsys, str(tmp_path / "runs"), "--format", "json")[0]
    for cells, rec in zip(table[1:], want, strict=True):
        for h, cell in zip(header, cells, strict=True):
            assert_cell_equals_json(cell, h, rec)


def test_bad_output_is_one_line_and_writes_nothing(study, tmp_path, capsys):
    code, err = report(capsys, str(study), "-o", str(tmp_path / "r.pdf"))
    assert code == 2 and err.strip().splitlines() == [
        f"nnopt report: error: -o {str(tmp_path / 'r.pdf')!r}: a report is written as HTML or Markdown; "
        "name the file *.html or *.md"]
    inside = study / "mnist-adam0" / "r.html"
    code, err = report(capsys, str(study), "-o", str(inside))
    assert code == 2 and "is inside run folder mnist-adam0; a report never writes into run folders" in err
    assert not inside.exists() and not (tmp_path / "r.pdf").exists()
    code, err = report(capsys, str(study), "--baseline", "adam", "-o", str(tmp_path / "r.html"))
    assert code == 2 and "--baseline compares groups of runs: add --group-by" in err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_nnopt_report_command(study, tmp_path):
    res = run_cli("report", str(study), "--group-by", "optimizer", "--bootstrap", "200", "-o", "r.html",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert "report" in run_cli("--help", cwd=tmp_path).stdout
