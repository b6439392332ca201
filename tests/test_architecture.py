"""The module layout issue 9 asks for, checked from the source: no import circle, building blocks
below the recipe, nnopt's own modules imported inside functions only where start-up time needs it,
and every conf/ file has its home in the code."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from nnopt_cli.config import conf_dir
from nnopt_cli.models import MODELS
from nnopt_cli.post import STAGES

PKG = Path(__file__).resolve().parents[1] / "nnopt_cli"
BUILDING_BLOCKS = ("models", "trainer", "optim", "activation", "init", "batch_size", "regularizer", "clip",
                   "precision", "early_stopping", "data", "observers", "checks", "build")
# in-function imports that keep `nnopt --help` and `nnopt compare` fast to start
LAZY_OK = {"cli", "compare"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(tree: ast.AST, top_level: bool) -> set[str]:
    nodes = tree.body if top_level else [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    found = set()
    for node in nodes:
        for n in ([node] if top_level else ast.walk(node)):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("nnopt_cli"):
                for alias in n.names:  # `from nnopt_cli.post import prune` imports a module
                    sub = f"{n.module}.{alias.name}"
                    found.add(sub if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists() else n.module)
            elif isinstance(n, ast.Import):
                found |= {a.name for a in n.names if a.name.startswith("nnopt_cli")}
    return found


GRAPH = {module_name(p): own_imports(ast.parse(p.read_text()), True) for p in PKG.rglob("*.py")}
LAZY = {module_name(p): own_imports(ast.parse(p.read_text()), False) for p in PKG.rglob("*.py")}


def test_no_import_circle():
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            pytest.fail("import circle: " + " -> ".join([*path[path.index(m):], m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for dep in GRAPH.get(m, ()):
            if dep != m and not m.startswith(dep + "."):  # a package's own __init__ is not a circle
                visit(dep, [*path, m])
        state[m] = 2

    for m in GRAPH:
        visit(m, [])


@pytest.mark.parametrize("block", BUILDING_BLOCKS)
def test_building_blocks_never_import_the_recipe_or_the_stages(block):
    mods = [m for m in GRAPH if m == f"nnopt_cli.{block}" or m.startswith(f"nnopt_cli.{block}.")]
    assert mods
    for m in mods:
        bad = {d for d in GRAPH[m] | LAZY[m] if d in ("nnopt_cli.runner", "nnopt_cli.train_app")
               or d.startswith("nnopt_cli.post")}
        assert not bad, f"{m} imports {bad}"


def test_in_function_imports_only_where_start_up_time_needs_them():
    offenders = {m: deps for m, deps in LAZY.items() if deps and m.split(".")[1] not in LAZY_OK}
    assert not offenders


def test_every_model_yaml_names_a_registered_builder_or_a_target():
    for f in (conf_dir() / "model").glob("*.yaml"):
        text = f.read_text()
        name = next(line.split(":", 1)[1].split("#")[0].strip() for line in text.splitlines() if line.startswith("name:"))
        assert name in MODELS or "_target_:" in text, f.name


def test_every_post_yaml_is_a_stage_module_with_check_run_and_output_file():
    names = {f.stem for f in (conf_dir() / "post").glob("*.yaml")} - {"measure"}
    assert names == set(STAGES)
    files = set()
    for name, module in STAGES.items():
        assert callable(module.check) and callable(module.run), name
        assert module.OUTPUT_FILE.startswith("model.") and module.OUTPUT_FILE not in files
        files.add(module.OUTPUT_FILE)


def test_no_module_is_far_over_300_lines():
    long = {module_name(p): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 330}
    assert not long


def test_every_module_imports_on_its_own():
    for m in GRAPH:
        importlib.import_module(m)
