"""The package's layout (docs/development.md): every module imports on its own, none is
over 650 lines, the modules' imports form no cycle, and the floors hold: the API never
imports the command line, and nothing but the command line does."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lmact

PACKAGE = Path(lmact.__file__).parent
MAX_LINES = 650
# Modules over the limit that may not grow, each to be split (another change's file).
OVERSIZED: dict[str, int] = {}


def module_files() -> dict[str, Path]:
    """Every module of lmact by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _type_checking(node: ast.stmt) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith(
        "TYPE_CHECKING"
    )


def _top_level_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """A module's statements run at import: its body, and what blocks there hold (`try`,
    `if`), leaving out what only a type checker reads (`if TYPE_CHECKING:`) and function
    and class bodies' imports inside functions."""
    statements = []
    for node in body:
        if _type_checking(node):
            continue
        statements.append(node)
        if isinstance(node, ast.If | ast.Try | ast.With):
            nested = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            for handler in getattr(node, "handlers", []):
                nested += handler.body
            statements += _top_level_statements(nested)
    return statements


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The lmact modules that `name` imports when it is imported: each the most specific
    module named (`from lmact.cli import run` is lmact.cli.run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _top_level_statements(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_lmacts_modules() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "lmact.cli.run" in graph["lmact.cli"]  # the graph is read
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_only_the_command_line_imports_the_command_line() -> None:
    graph = import_graph()
    importers = {
        module
        for module, imported in graph.items()
        if any(i == "lmact.cli" or i.startswith("lmact.cli.") for i in imported)
    }
    assert importers and all(m == "lmact.cli" or m.startswith("lmact.cli.") for m in importers)
    # Imports inside functions count too: none outside lmact/cli/ imports it anywhere.
    for name, path in module_files().items():
        if name == "lmact.cli" or name.startswith("lmact.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            named = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            named += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "lmact.cli" or n.startswith("lmact.cli.") for n in named), name


def test_importing_the_api_does_not_import_the_command_line() -> None:
    code = "import sys, lmact.api\nprint(sorted(m for m in sys.modules if 'lmact.cli' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_module_imports_in_a_fresh_process_and_none_is_too_long() -> None:
    modules = module_files()
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    importable = [name for name in modules if not name.endswith(".__main__")]  # those run
    done = subprocess.run([sys.executable, "-c", code, *importable], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name, path in modules.items():
        lines = len(path.read_text().splitlines())
        assert lines <= OVERSIZED.get(name, MAX_LINES), f"{name}: {lines} lines; split it"
