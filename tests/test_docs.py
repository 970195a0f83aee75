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
#: Pages whose blocks need optional extras (amber-rl[onnx,keras]): skipped without them.
NEEDS = {"export.md": ("onnx", "onnxruntime", "tensorflow", "keras")}


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
