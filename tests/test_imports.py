"""The package's import graph has no cycles, and light modules stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "quide_search"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """Modules of the package imported anywhere (functions too), except under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in modules)  # fmt: skip
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        edges = _imports(ast.parse(path.read_text(encoding="utf-8")), modules)
        # Importing a.b.c runs a/__init__ and a/b/__init__ first: not an edge of one's own.
        graph[name] = {m for m in edges if m != name and not name.startswith(m + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    assert len(graph) > 60 and "quide_search.study.session" in graph
    assert _cycles(graph) == []


LAYERS = (
    ("foundation", {"_version", "_lazy", "errors", "files", "metric", "plan", "progress",
                    "records", "results", "storage_url"}),
    ("latency", {"latency"}),
    ("backends", {"backends"}),
    ("tasks", {"tasks"}),
    ("settings", {"protocol", "protocol_builder", "config"}),
    ("measure", {"measure"}),
    ("search", {"search"}),
    ("study", {"study"}),
    ("output", {"output"}),
    ("cli", {"cli", "__main__", ""}),  # "": the package itself, the public API's facade
)  # fmt: skip
"""The package's layers, lowest first: a module imports from its own layer and those below,
never from one above (type-only imports under TYPE_CHECKING excepted). docs/extending.md."""


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return next(i for i, (_, members) in enumerate(LAYERS) if part in members)


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
        for a, targets in graph.items()
        for b in targets
        if _layer(b) > _layer(a)
    )


def _edges_with_the_package() -> dict[str, set[str]]:
    """The import graph, with imports of the package itself (``from quide_search import X``)
    kept: ``_graph`` drops a module's own ancestors, the package among them."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(ast.parse(path.read_text(encoding="utf-8")), set(files))
               if m != name}
        for name, path in files.items()
    }  # fmt: skip


def test_every_import_goes_down_the_declared_layers() -> None:
    graph = _edges_with_the_package()
    unplaced = [m for m in graph if m.count(".") >= 1 and not any(
        m.split(".")[1] in members for _, members in LAYERS)]  # fmt: skip
    assert unplaced == [], "place each new module in LAYERS"
    assert _upward(graph) == []


def test_the_layer_check_finds_an_upward_import() -> None:
    graph = {
        "quide_search.config": {"quide_search.study.budget"},
        "quide_search.protocol": {"quide_search"},
        "quide_search.study.run": {"quide_search.plan"},
    }
    assert _upward(graph) == [
        "quide_search.config (settings) imports quide_search.study.budget (study)",
        "quide_search.protocol (settings) imports quide_search (cli)",
    ]


def test_each_folder_names_its_layer() -> None:
    for folder in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        assert f"Layer: {LAYERS[_layer(f'quide_search.{folder.name}')][0]}" in doc, folder.name


def test_the_version_is_the_projects() -> None:
    import tomllib

    from quide_search._version import __version__

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    "module",
    ["quide_search", "quide_search.cli", "quide_search.config", "quide_search.protocol",
     "quide_search.records", "quide_search.latency.profiles", "quide_search.backends"],
)  # fmt: skip
def test_light_modules_import_no_heavy_library(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('torch', 'optuna', 'optimum', 'transformers', 'onnx', "
        "'onnxruntime') "
        "if m in sys.modules))"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=60)  # fmt: skip
    assert probe.stdout.strip() == "[]", module


def test_quantizing_with_quanto_does_not_import_transformers() -> None:
    # optimum-quanto's __init__ imports its transformers model wrappers, and with them all of
    # transformers and torchao (seconds in every process); quide-search loads them only to save
    # a causal LM in quanto's layout.
    code = """
import sys, torch
from quide_search.backends.quanto import QuantoBackend
backend = QuantoBackend()
layer = backend.quantize_layer(torch.nn.Linear(8, 4), "int8")
loaded = [name in sys.modules for name in ("transformers", "torchao")]
print(type(layer).__name__, backend.version(), *loaded)
from optimum.quanto import QuantizedModelForCausalLM  # imported when named
print(QuantizedModelForCausalLM.__name__)
"""
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120, check=False)  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-2000:]
    import optimum.quanto

    expected = ["QLinear", optimum.quanto.__version__, "False", "False"]
    assert probe.stdout.split() == [*expected, "QuantizedModelForCausalLM"]
