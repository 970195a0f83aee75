"""Render docs/hooks.md from amber.hookspecs (run: python docs/gen_hooks.py).

tests/test_docs.py checks that docs/hooks.md is what this script produces,
so the hook reference cannot drift from the code.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from amber import hookspecs

HEADER = """# Hook reference

Generated from `amber.hookspecs` by `python docs/gen_hooks.py`; do not edit.
Every hook is called with keyword arguments; an implementation may accept any
subset of them. Plugins decorate implementations with `@amber.hookimpl`.
"""


def render() -> str:
    """The markdown of every hook spec, in declaration order."""
    parts = [HEADER]
    source = inspect.getsource(hookspecs)
    names = [n for n in vars(hookspecs) if n.startswith("amber_")]
    names.sort(key=lambda n: source.index(f"def {n}("))
    for name in names:
        fn = getattr(hookspecs, name)
        opts = getattr(fn, "amber_spec", {}) or {}
        first = (
            " firstresult (stops at the first non-None result)"
            if opts.get("firstresult")
            else " every plugin's result is collected"
        )
        sig = str(inspect.signature(fn)).replace("'", "")
        doc = inspect.cleandoc(fn.__doc__ or "")
        parts.append(f"## `{name}{sig}`\n\nCalling style:{first}\n\n{doc}\n")
    return "\n".join(parts)


if __name__ == "__main__":
    out = Path(__file__).with_name("hooks.md")
    out.write_text(render())
    sys.stdout.write(f"wrote {out}\n")
