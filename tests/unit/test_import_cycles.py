"""No import cycle among the daemon's own modules (daemon/mayflyd).

The graph is read from the source with ast, not by importing: an edge per
`import`/`from ... import` that names a mayflyd module, plus the packages
whose __init__ that import runs (the importer's own ancestors excepted: they
are always initialised before it). Imports under `if TYPE_CHECKING:` never
run and are left out. Imports inside functions run later, at call time, so
they are checked on their own graph: a cycle through one is not a crash at
start-up, but it is still a layering mistake.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "daemon"


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    deferred: bool  # made inside a function body


def module_names(root: Path) -> dict[str, Path]:
    names = {}
    for path in sorted((root / "mayflyd").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that runs, with whether it sits in a function."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append((node, in_function))
        nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    visit(tree, False)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_edges(root: Path) -> list[Edge]:
    modules = module_names(root)
    edges = []
    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        for node, deferred in _imports(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    # Relative: from the importer's package, one level up per extra dot.
                    base = importer.split(".") if is_package else importer.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
            for target in targets:
                for name in [*_ancestors(target), target]:
                    if name in modules and name != importer and name not in _ancestors(importer):
                        edges.append(Edge(importer, name, node.lineno, deferred))
    return edges


def find_cycle(edges: list[Edge]) -> list[Edge] | None:
    """One cycle of the graph as the list of its edges, or None."""
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, []).append(edge)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Edge] = []

    def visit(module: str) -> list[Edge] | None:
        state[module] = 1
        for edge in graph.get(module, []):
            if state.get(edge.imported) == 1:
                start = next(i for i, e in enumerate(path) if e.importer == edge.imported) if path else 0
                return [*path[start:], edge]
            if edge.imported not in state:
                path.append(edge)
                cycle = visit(edge.imported)
                if cycle is not None:
                    return cycle
                path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle is not None:
                return cycle
    return None


def describe(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].importer] + [f"{e.imported} (line {e.line} of {e.importer})" for e in cycle])


def test_the_graph_sees_the_daemon_modules() -> None:
    """Guards the test itself: an empty graph would pass any cycle check."""
    edges = import_edges(PACKAGE_ROOT)
    pairs = {(e.importer, e.imported) for e in edges}
    assert ("mayflyd.supervisor.daemon", "mayflyd.config") in pairs
    assert ("mayflyd.config", "mayflyd.config.model") in pairs  # relative import
    assert ("mayflyd.host.zygote", "mayflyd._mayfly") not in pairs  # an extension module, not a source file
    assert any(e.deferred and e.importer == "mayflyd.cli.main" for e in edges)


@pytest.mark.parametrize("with_deferred", [False, True], ids=["at import time", "with imports in functions"])
def test_no_import_cycle(with_deferred: bool) -> None:
    edges = [e for e in import_edges(PACKAGE_ROOT) if with_deferred or not e.deferred]
    cycle = find_cycle(edges)
    assert cycle is None, f"import cycle: {describe(cycle)}"


def test_a_cycle_is_found_and_named(tmp_path: Path) -> None:
    pkg = tmp_path / "mayflyd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from mayflyd import b\n")
    (pkg / "b.py").write_text("def f() -> None:\n    from . import c\n")
    (pkg / "c.py").write_text("import mayflyd.a\n")
    edges = import_edges(tmp_path)
    assert find_cycle([e for e in edges if not e.deferred]) is None
    cycle = find_cycle(edges)
    assert cycle is not None
    assert describe(cycle) == ("mayflyd.a -> mayflyd.b (line 1 of mayflyd.a) -> mayflyd.c (line 2 of mayflyd.b)"
                               " -> mayflyd.a (line 1 of mayflyd.c)")
