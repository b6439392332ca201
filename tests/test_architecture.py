"""The package's layers, checked from the source: imports point down the layers (docs/architecture.md),
no import circle, no command imports another, compare runs without torch, nnopt's own modules are
imported inside functions only where start-up time needs it, and every conf/ file has its home in
the code."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from nnopt_cli.config import conf_dir
from nnopt_cli.models import MODELS
from nnopt_cli.post import STAGES

PKG = Path(__file__).resolve().parents[1] / "nnopt_cli"
# The layers, top to bottom. A module imports only from its own layer or the layers below it;
# compare/ stands apart (it reads run folders without torch and is imported by no training code).
LAYERS = [
    {"cli"},                             # the commands, one module each
    {"tune", "sweep"},                   # many runs: searches and Hydra sweeps
    {"run"},                             # one run: its checks, folder, recipe
    {"post", "diagnostics", "loggers"},  # what a run does around training
    {"store"},                           # the run folder on disk: files, checkpoint, untrusted reading
    {"training"},                        # the loop and what each step calls
    {"optim", "models", "data"},         # what is trained, on what, by which update
    {"config"},                          # conf/ and the value checks every group uses
    {"errors"},
]
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
TOP_LEVEL_FILES = {"__init__", "__main__"}  # nnopt_cli/__init__.py (the version) and `python -m nnopt_cli`
# what compare may read a run folder with: file names and untrusted-file readers, both torch-free
TORCH_FREE_STORE = {"nnopt_cli.store.layout", "nnopt_cli.store.untrusted", "nnopt_cli.store.outputs"}
# in-function imports that keep `nnopt --help` and `nnopt compare` fast to start
# (and the Python API in nnopt_cli/__init__.py: `import nnopt_cli` must not import torch)
LAZY_OK = {"cli", "compare", "__init__"}


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


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    packages = {package_of(m) for m in GRAPH} - TOP_LEVEL_FILES
    assert packages - {"compare"} == set(LAYER_OF), "add a new package to LAYERS"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_the_layers(module):
    pkg = package_of(module)
    if pkg in TOP_LEVEL_FILES:
        return
    for dep in GRAPH[module] | LAZY[module]:
        dep_pkg = package_of(dep)
        if dep_pkg == "__init__" or dep_pkg == pkg:
            continue
        if pkg == "compare":
            assert dep_pkg in ("config", "errors") or dep in TORCH_FREE_STORE, \
                f"compare imports {dep}: it reads run folders without torch"
        elif dep_pkg == "compare":
            continue  # anyone may read run folders the way compare does
        else:
            assert LAYER_OF[dep_pkg] >= LAYER_OF[pkg], f"{module} imports {dep}: {dep_pkg}/ is above {pkg}/"


def test_no_command_imports_another():
    for m in GRAPH:
        if package_of(m) == "cli":
            assert not {d for d in GRAPH[m] | LAZY[m] if package_of(d) == "cli" and d != m}, m


@pytest.mark.slow
def test_compare_starts_without_torch():
    code = ("import sys, pkgutil, importlib, nnopt_cli.compare as c, nnopt_cli.cli.compare\n"
            "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('nnopt_cli.compare.' + m.name)\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_in_function_imports_only_where_start_up_time_needs_them():
    offenders = {m: deps for m, deps in LAZY.items() if deps and package_of(m) not in LAZY_OK}
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


def test_every_module_imports_on_its_own():
    for m in GRAPH:
        importlib.import_module(m)


def test_no_module_re_exports_another_modules_names():
    """Import a name from its home: an unused import kept for others to import would hide where it lives."""
    offenders = [f"{p.relative_to(PKG.parent)}:{i}" for p in PKG.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if line.startswith("from nnopt_cli") and "noqa: F401" in line]
    assert not offenders
