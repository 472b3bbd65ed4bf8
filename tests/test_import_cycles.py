"""The rlq package has no import cycle: no module imports, at its top or inside a function, a module that (through
any chain of imports) imports it back. A cycle makes the order of imports matter and hides half-initialised modules."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "rlq"


def imported_modules(path) -> set[str]:
    """The rlq modules a file imports anywhere in it: `import rlq.x`, `from rlq.x import y`, `from rlq import x`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("rlq.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "rlq":
            names |= {f"rlq.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("rlq."):
            names.add(node.module)
    return names


def import_graph() -> dict[str, set[str]]:
    """{module: the rlq modules it imports}, for every module of the package (`from rlq import __version__` and other
    names that are no module are left out)."""
    modules = {f"rlq.{path.stem}": path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {name: imported_modules(path) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None: a depth-first search that meets a module on its own path."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            cycle = visit(imported, path + [module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_the_finder_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "rlq.synthetic" in graph["rlq.data"]  # imported inside load_dataset only
    assert {"rlq.authors", "rlq.checkpoint_format"} <= graph["rlq.checkpoint"]


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
