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
# keys whose value is a run folder the reader made earlier (outputs/2026-11-23/17-00-00-...): a line
# naming one that is missing here is composed with a tiny real run folder in its place (doc_runs)
FOLDER_KEYS = ("resume", "continue_from", "init_from", "post.distill.teacher_run")
DATA_KEYS = ("dataset.path",)  # the reader's own data on disk
# the packages the docs' examples of "your own class" live in
READERS_MODULES = ("my_pkg.", "my_module.")
# flags that print something instead of running (their lines are checked without them)
INFO_FLAGS = {"--help", "-h", "--cfg", "-c", "--info", "-i", "--hydra-help"}


def fenced_commands(page: Path, starts: str) -> list[tuple[str, str]]:
    """(where, command) for every line of the page's code blocks that matches the regex `starts`,
    with its `\\` continuations joined."""
    found, in_fence, pending, start = [], False, "", 0
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence, pending = not in_fence, ""
            continue
        if not in_fence:
            continue
        text = line.strip().removeprefix("$ ")
        if pending:
            text, pending = pending + " " + text, ""
        elif not re.match(starts, text):
            continue
        else:
            start = n
        if text.endswith("\\"):
            pending = text[:-1]
            continue
        found.append((f"{page.relative_to(ROOT)}:{start}", text))
    return found


def train_commands(page: Path) -> list[tuple[str, str]]:
    """(where, command) for every `nnopt train ...` the page shows: lines of its code blocks and
    inline code spans."""
    inline, in_fence = [], False
    for n, line in enumerate(page.read_text().splitlines(), 1):
        in_fence ^= line.lstrip().startswith("```")
        if not in_fence:
            inline += [(f"{page.relative_to(ROOT)}:{n}", m) for m in INLINE_TRAIN.findall(line)]
    return fenced_commands(page, r"nnopt train") + inline


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


def names_reader_folder(command: str) -> bool:
    """Whether a train line names a run folder of the reader's (resume=outputs/...) that is not here."""
    import shlex

    return any(w.partition("=")[0] in FOLDER_KEYS and w.partition("=")[2] and
               not (ROOT / w.partition("=")[2].split(":")[0]).exists() for w in shlex.split(command, comments=True))


def doc_train_params():
    slow = pytest.mark.slow  # the tiny run folders they need are made by a real sweep (a subprocess)
    return [pytest.param(w, c, id=w, marks=[slow] if names_reader_folder(c) else []) for w, c in DOC_COMMANDS]


# the doc_runs tree: sweeps of tiny runs with what the docs' compare / report / export lines read
# (two optimizers, two activations for dead ReLUs and saturated tanh units, diagnostics with
# sharpness, a prune stage with its measurements, tags; a second workload for cross-workload plots)
DOC_SWEEP = "outputs/multirun/2026-11-23"
DOC_DATA = ["dataset=synthetic", "dataset.n_train=256", "dataset.n_test=64", "dataset.val_size=64"]
DOC_RUNS = [*DOC_DATA, "device=cpu", "epochs=2", "batch_size.size=64", "threads=1", "model.hidden=[16]",
            "activation=relu,tanh", "optimizer=sgd,adam", "seed=0", "diagnostics=full", "diagnostics.every=2",
            "diagnostics.sharpness.samples=64", "diagnostics.sharpness.iters=5", "diagnostics.sharpness.trace_samples=2",
            "post=prune", "post.prune.finetune_epochs=0", "post.measure.latency_repeats=2", "tags=[paper]"]
OTHER_WORKLOAD = ["dataset=mnist1d", "dataset.num_samples=400", "dataset.val_size=50", "device=cpu", "epochs=2",
                  "threads=1", "model.hidden=[16]", "optimizer=sgd,adam"]


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory) -> Path:
    """A folder whose outputs/multirun/2026-11-23/<job> are six tiny completed runs (two workloads)
    made by `nnopt train -m`, for the docs' lines that name run folders."""
    from tests.conftest import run_cli

    home = tmp_path_factory.mktemp("doc_runs")
    for overrides, folder in ((DOC_RUNS, DOC_SWEEP), (OTHER_WORKLOAD, DOC_SWEEP + "-mnist1d")):
        done = run_cli("train", "-m", *overrides, f"hydra.sweep.dir={folder}", cwd=home)
        assert done.returncode == 0, done.stderr[-2000:]
    return home


def doc_run_folder(doc_runs: Path, value: str) -> str:
    """A tiny run folder (keeping a `:file` part) in place of the reader's folder in `value`."""
    folder, colon, file = value.partition(":")
    runs = sorted(p for p in (doc_runs / DOC_SWEEP).iterdir() if (p / "summary.json").is_file())
    return str(runs[0]) + colon + file


def test_the_docs_show_train_commands_to_check():
    assert len(DOC_COMMANDS) > 60 and any("-m" in c.split() for _, c in DOC_COMMANDS)


@pytest.mark.parametrize("where, command", doc_train_params())
def test_every_train_command_in_the_docs_composes_and_validates(where, command, request):
    """Each `nnopt train` line of the README and docs/ composes and passes nnopt's checks as
    written (a -m line: each value of each sweep), a run folder of the reader's replaced by a tiny
    real one; lines meant to be refused show that they are."""
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
    for o in list(overrides):
        key, _, value = o.partition("=")
        if key in FOLDER_KEYS and value and not (ROOT / value.split(":")[0]).exists():
            overrides[overrides.index(o)] = f"{key}={doc_run_folder(request.getfixturevalue('doc_runs'), value)}"
            if not any(w.startswith("dataset=") for w in overrides):  # a teacher must share the dataset
                overrides[:0] = DOC_DATA
            if not any(w.startswith(("model=", "model.hidden=")) for w in overrides):  # and a source the model
                overrides[:0] = ["model.hidden=[16]"]
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
        except NnoptError as e:
            if "is not installed: pip install" in str(e):  # an optional extra (logger=mlflow, wandb) not here
                pytest.skip(str(e))
            if "a source with this run's architecture" in str(e) and any(w.startswith("model") for w in words):
                pytest.skip("the line's model matches the reader's source folder, not the tiny one put in its place")
            pytest.fail(f"{where}: `{command}` ({' '.join(variant)}): {e}")
        except Exception as e:  # the test's answer names the line and the first line of the error
            pytest.fail(f"{where}: `{command}` ({' '.join(variant)}): {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:300]}")


# ---------------------------------------------------------------------------- commands on run folders

FOLDER_COMMANDS = ("compare", "ls", "report", "export")
SHELL_ENDS = ("&&", "|", ">", ";")


def folder_commands(page: Path) -> list[tuple[str, str]]:
    """(where, command) for every `nnopt compare|ls|report|export ...` line of the page's code blocks
    (with their `\\` continuations), cut where the shell takes over (`> runs.csv`, `&& tensorboard`)."""
    return fenced_commands(page, rf"nnopt (?:{'|'.join(FOLDER_COMMANDS)})(?: |$)")


FOLDER_DOC_COMMANDS = [c for page in COMMAND_PAGES for c in folder_commands(page)]


def test_the_docs_show_folder_commands_to_run():
    commands = {c.split()[1] for _, c in FOLDER_DOC_COMMANDS}
    assert set(FOLDER_COMMANDS) <= commands and len(FOLDER_DOC_COMMANDS) > 30


@pytest.mark.slow
@pytest.mark.parametrize("where, command", FOLDER_DOC_COMMANDS, ids=[w for w, _ in FOLDER_DOC_COMMANDS])
def test_every_folder_command_in_the_docs_runs_on_tiny_run_folders(where, command, doc_runs, tmp_path,
                                                                   monkeypatch, capsys):
    """Each `nnopt compare|ls|report|export` line runs as written in a copy of doc_runs (where
    outputs/ holds a sweep of tiny runs), a folder of the reader's (outputs/study, outputs/...)
    replaced by outputs/; it exits 0 and what it says it writes is there."""
    import shlex
    import shutil

    from nnopt_cli.cli.main import main

    words = shlex.split(command, comments=True)
    for end in SHELL_ENDS:
        words = words[:words.index(end)] if end in words else words
    if any("<" in w for w in words):
        pytest.skip("a placeholder for the reader to fill in (<study>, ...)")
    if any(w.startswith("outputs/claims/") for w in words):
        pytest.skip("reads the claims ledger's own runs (tests/test_claims.py checks their presets)")
    shutil.copytree(doc_runs, tmp_path / "home")
    monkeypatch.chdir(tmp_path / "home")
    args = [("outputs" if w.startswith("outputs") and not Path(w).exists() else w) for w in words[1:]]
    try:
        main(args)
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()
        assert e.code in (0, None), f"{where}: `{command}` exited {e.code}: {err[-1] if err else ''}"
    for flag in ("-o", "--plot", "--out"):
        if flag in args:
            assert Path(args[args.index(flag) + 1]).exists(), f"{where}: `{command}` wrote no {flag} output"
