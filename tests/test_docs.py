"""The user docs hold together: links resolve, the README stays a short front door that starts with
the two commands a new user runs, every command is in it, and every source path the docs name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnopt_cli.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
TOPIC_PAGES = sorted((ROOT / "docs").glob("*.md"))

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SOURCE_PATH = re.compile(r"\b(?:nnopt_cli|tests|conf|benchmarks|hydra_plugins)/[\w/.-]*\w\.(?:py|yaml)\b")


def prose(text: str) -> str:
    """The text outside fenced code blocks (a link inside a code sample is not a link)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text()).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: " + "; ".join(broken)


def test_the_checks_above_see_a_broken_link_and_a_broken_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some `key` here\n\n[ok](#some-key-here) [gone](b.md)\n"
                                   "[bad](#nowhere)\n\n```\n[in code](c.md)\n```\n")
    assert relative_links(tmp_path / "a.md") == ["#some-key-here", "b.md", "#nowhere"]
    assert anchors(tmp_path / "a.md") == {"title", "some-key-here"}


def test_readme_is_a_short_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_starts_with_make_run_then_make_test():
    text = README.read_text()
    commands = [line.split("#")[0].strip() for block in FENCE.findall(text) for line in block.splitlines()[1:-1]]
    commands = [c.lstrip("$ ").strip() for c in commands if c]
    assert commands[:2] == ["make run", "make test"], f"the README's first commands are {commands[:2]}"
    before = text[: text.index("make run")]
    assert "`nnopt " not in before and "pip install" not in before, "a command comes before `make run`"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_is_in_the_readme(command):
    assert f"nnopt {command}" in README.read_text(), f"`nnopt {command}` is missing from README.md"


@pytest.mark.parametrize("page", TOPIC_PAGES, ids=lambda p: p.name)
def test_every_topic_page_opens_with_a_summary_and_a_contents_list(page):
    lines = page.read_text().splitlines()
    assert lines[0].startswith("# "), f"{page.name} does not start with a title"
    assert lines[2].strip() and not lines[2].startswith("#"), f"{page.name} has no summary paragraph"
    assert "Contents" in lines[:25], f"{page.name} has no contents list near the top"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_source_path_the_docs_name_exists(page):
    missing = sorted({p for p in SOURCE_PATH.findall(page.read_text()) if not (ROOT / p).exists()})
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"
