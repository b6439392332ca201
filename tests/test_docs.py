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


# ---------------------------------------------------------------------------- the docs' own commands

COMMAND_PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
INLINE_TRAIN = re.compile(r"`(nnopt train(?: [^`]*)?)`")
# keys whose value is a run folder the reader made earlier (outputs/2026-11-23/17-00-00-...): the
# docs name folders that exist only on the reader's disk, so a line naming one that is missing here
# is not composed (its other overrides are checked by the lines around it)
FOLDER_KEYS = ("resume", "continue_from", "init_from", "post.distill.teacher_run")
DATA_KEYS = ("dataset.path",)  # the reader's own data on disk
# the packages the docs' examples of "your own class" live in
READERS_MODULES = ("my_pkg.", "my_module.")
# flags that print something instead of running (their lines are checked without them)
INFO_FLAGS = {"--help", "-h", "--cfg", "-c", "--info", "-i", "--hydra-help"}


def train_commands(page: Path) -> list[tuple[str, str]]:
    """(where, command) for every `nnopt train ...` the page shows: lines of its code blocks (with
    their `\\` continuations) and inline code spans."""
    found = []
    in_fence, pending, start = False, "", 0
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence, pending = not in_fence, ""
            continue
        if in_fence:
            text = line.strip().removeprefix("$ ")
            if pending:
                text, pending = pending + " " + text, ""
            elif not text.startswith("nnopt train"):
                continue
            else:
                start = n
            if text.endswith("\\"):
                pending = text[:-1]
                continue
            found.append((f"{page.relative_to(ROOT)}:{start}", text))
        else:
            found += [(f"{page.relative_to(ROOT)}:{n}", m) for m in INLINE_TRAIN.findall(line)]
    return found


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """One override list per value of each choice sweep (`optimizer=sgd,adam` -> optimizer=sgd, then
    optimizer=adam, the other sweeps at their first value): every value composes, without the product."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = [parser.parse_override(o) for o in overrides]
    firsts, choices = [], []
    for o, p in zip(overrides, parsed, strict=True):
        key = o.split("=", 1)[0]
        values = list(p.sweep_string_iterator()) if p.is_sweep_override() and p.is_choice_sweep() else None
        if values is None and p.is_sweep_override():  # a range: its first and last value
            values = [str(v) for v in p.sweep_iterator()]
            values = [values[0], values[-1]] if values else []
        firsts.append(f"{key}={values[0]}" if values else o)
        choices.append([f"{key}={v}" for v in values] if values else [o])
    variants = [firsts]
    for i, options in enumerate(choices):
        variants += [[*firsts[:i], option, *firsts[i + 1:]] for option in options[1:]]
    return variants


DOC_COMMANDS = [c for page in COMMAND_PAGES for c in train_commands(page)]


def test_the_docs_show_train_commands_to_check():
    assert len(DOC_COMMANDS) > 60 and any("-m" in c.split() for _, c in DOC_COMMANDS)


@pytest.mark.parametrize("where, command", DOC_COMMANDS, ids=[w for w, _ in DOC_COMMANDS])
def test_every_train_command_in_the_docs_composes_and_validates(where, command):
    """Each `nnopt train` line of the README and docs/ composes and passes nnopt's checks as
    written (a -m line: each value of each sweep); lines meant to be refused show that they are."""
    import shlex

    from nnopt_cli.errors import NnoptError
    from nnopt_cli.run.tools import compose_config

    words = shlex.split(command, comments=True)[2:]
    if any("<" in w or "..." in w for w in words):
        pytest.skip("a placeholder for the reader to fill in (<name>, ...)")
    if any(w.split("=", 1)[-1].startswith(READERS_MODULES) for w in words):
        pytest.skip("names a class of the reader's own package (my_pkg.MyNet), not installed here")
    overrides, skip_next = [], False
    for w in words:
        if skip_next:
            skip_next = False
        elif w in ("-sc", "--shell-completion"):
            skip_next = True  # install=bash: Hydra's completion, not a config
        elif w in INFO_FLAGS:
            skip_next = w in ("--cfg", "-c", "--info", "-i")  # their value: job, hydra, all
        elif not w.startswith("-"):
            overrides.append(w)
    for o in overrides:
        key, _, value = o.partition("=")
        if key in FOLDER_KEYS and value and not (ROOT / value.split(":")[0]).exists():
            pytest.skip(f"{key}= names a run folder of the reader's ({value})")
        if key in DATA_KEYS and value and not (ROOT / value).exists():
            pytest.skip(f"{key}= names data of the reader's ({value})")
    refused = "optimizer.lr=-1" in overrides  # the docs' example of a refused value
    for variant in sweep_variants(overrides):
        if refused:
            with pytest.raises(NnoptError, match="optimizer.lr=-1"):
                compose_config(variant)
            continue
        try:
            compose_config(variant)
        except Exception as e:  # the test's answer names the line and the first line of the error
            pytest.fail(f"{where}: `{command}` ({' '.join(variant)}): {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:300]}")
