"""The source stays easy to find one's way in: small modules, short functions, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Package roots: the directory and the dotted name it installs as.
ROOTS = [(ROOT / "core", "amber"), *((p, f"amber.plugins.{p.name}") for p in sorted((ROOT / "plugins").iterdir())
                                      if p.is_dir() and (p / "__init__.py").exists())]
MODULES: dict[str, Path] = {}
for base, dotted in ROOTS:
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        MODULES[".".join([dotted, *parts])] = path


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small_and_functions_short(module):
    source = MODULES[module].read_text()
    assert len(source.splitlines()) <= 400, f"{module} has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            assert node.end_lineno - first + 1 <= 60, f"{module}.{node.name} is {node.end_lineno - first + 1} lines"


def _runtime_imports(module: str) -> set[str]:
    """The amber modules ``module`` imports when it is imported (not under TYPE_CHECKING)."""
    path = MODULES[module]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join([*package, base] if base else package)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    out = {m for m in found if m in MODULES and m != module}
    for name in list(out):  # importing a.b.c imports a and a.b, unless they are module's own packages
        parts = name.split(".")
        out.update(p for i in range(1, len(parts)) if (p := ".".join(parts[:i])) in MODULES
                   and p != module and not module.startswith(p + "."))
    return out


def test_no_import_cycle_among_amber_modules():
    graph = {m: _runtime_imports(m) for m in MODULES}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
    assert graph["amber.checkpoint"] and graph["amber.cli"], "the import graph was not read"


def _imported_anywhere(module: str) -> set[str]:
    """Every module ``module`` names in an import statement, at any depth (a function's own included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _plugin_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if parts[:2] == ["amber", "plugins"] and len(parts) > 2 else None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_plugins_import_no_other_plugin_and_the_core_imports_none(module):
    """A plugin is replaceable on its own: no other plugin imports it, and the core reaches it only
    through pluggy hooks (``plugin_manager`` loads the in-tree ones by name)."""
    own = _plugin_of(module)
    crossing = sorted(name for name in _imported_anywhere(module)
                      if (plugin := _plugin_of(name)) is not None and plugin != own)
    assert not crossing, f"{module} imports {crossing}"
