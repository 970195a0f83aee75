"""The docs are executable and the hook reference matches the code."""

from __future__ import annotations

import inspect
import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
#: Pages whose blocks need optional extras (amber-rl[onnx,keras,pettingzoo]): skipped without them.
NEEDS = {"export.md": ("onnx", "onnxruntime", "tensorflow", "keras"), "environments.md": ("pettingzoo", "mpe2"),
         "frameworks.md": ("tensorflow", "keras"), "scaling.md": ("ray",)}


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: p.name)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    for module in NEEDS.get(page.name, ()):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(_blocks(page)):
        code = compile(block, f"{page.name}[block {i}]", "exec")
        exec(code, namespace)  # noqa: S102 - the docs are ours


def test_hook_reference_is_generated_from_the_specs():
    gen = runpy.run_path(str(ROOT / "docs" / "gen_hooks.py"))
    assert (ROOT / "docs" / "hooks.md").read_text() == gen["render"](), "run: python docs/gen_hooks.py"


def test_every_hook_and_its_signature_is_documented(pm):
    text = (ROOT / "docs" / "hooks.md").read_text()
    names = [n for n in dir(pm.hook) if n.startswith("amber_")]
    assert names
    for name in names:
        spec = getattr(pm.hook, name).spec
        params = list(inspect.signature(spec.function).parameters)
        heading = re.search(rf"^## `{name}\((.*?)\)", text, re.M)
        assert heading, f"{name} is not documented"
        assert [p.split(":")[0].strip() for p in heading.group(1).split(",") if p] == params


def test_architecture_names_only_what_exists():
    """docs/architecture.md stays true: every module, attribute and file it names exists."""
    import importlib
    import importlib.util

    text = (ROOT / "docs" / "architecture.md").read_text()
    names = set(re.findall(r"`(amber(?:\.\w+)+)", text))
    assert len(names) > 20
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            module = ".".join(parts[:cut])
            try:
                if importlib.util.find_spec(module) is not None:
                    break
            except ModuleNotFoundError:  # a function's name: its parent is a module, not a package
                continue
        obj = importlib.import_module(module)
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"architecture.md names {name}, which does not exist"
            obj = getattr(obj, attr)
    for path in set(re.findall(r"`((?:core|plugins)/[\w/.]+)`", text)):
        assert (ROOT / path).exists(), f"architecture.md names {path}, which does not exist"


def test_the_built_in_names_table_is_the_registry():
    """format.md's table of built-in names is what `amber.names.BUILTIN` holds, row for row."""
    from amber.names import BUILTIN

    text = (ROOT / "docs" / "format.md").read_text()
    table = text.split("amber's built-in table (`amber.names.BUILTIN`)", 1)[1].split("\n\n", 2)[1]
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", table, flags=re.M))
    assert rows == BUILTIN
