"""`nnopt report -o x.html` opened in a headless browser: the page is not blank, every figure loads,
and the browser logs no error. Skipped when playwright or a Chromium binary is missing."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from matplotlib.image import imread

from nnopt_cli.cli.report import run as report_main
from tests.compare.test_plot_labels import study  # noqa: F401  (the fixture: runs for every figure)

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


def chromium() -> str | None:
    """A Chromium on this machine: $NNOPT_TEST_CHROMIUM, the system's, or playwright's own download."""
    for path in (os.environ.get("NNOPT_TEST_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 shutil.which("google-chrome")):
        if path and Path(path).is_file():
            return path
    return None


@pytest.mark.slow
def test_html_report_renders_in_a_browser_with_every_image_and_no_console_error(study, tmp_path, capsys):  # noqa: F811
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set NNOPT_TEST_CHROMIUM)")
    out = tmp_path / "report.html"
    report_main([str(study), "--group-by", "optimizer", "--target", "val/acc=0.5", "--bootstrap", "200",
                 "-o", str(out)])
    capsys.readouterr()
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:80]}"))
        page.goto(out.as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])")
        shot = page.screenshot(full_page=True)
        browser.close()
    assert problems == []
    # the figures this study allows: curves, time to target, LR sensitivity, profile, diagnostics, tradeoffs
    assert len(images) == 6 and all(done and width > 0 for done, width, _ in images), images
    pixels = imread(io.BytesIO(shot))
    assert pixels.shape[0] > 900 and pixels[..., :3].std() > 0.05  # a page of text and figures, not blank
