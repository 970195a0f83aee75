"""How a remote env runner's death is reported (:mod:`amber.envs.ray_runners`): which module
it could not import, what was tried, what to do."""

from __future__ import annotations

import re

__all__ = ["MAX_RESTARTS_PER_CALL", "died_message", "missing_module"]

#: How many times one call rebuilds a dead runner before giving up.
MAX_RESTARTS_PER_CALL = 3


def missing_module(error: BaseException) -> str | None:
    """The module a runner actor could not import (its death's cause), or None."""
    found = re.search(r"(?:ModuleNotFoundError|ImportError): No module named '([^']+)'", str(error))
    if found is None and re.search(r"\b(?:ModuleNotFoundError|ImportError)\b", str(error)):
        return "?"
    return None if found is None else found.group(1)


def died_message(index: int, error: BaseException, missing: str | None, restart: bool, rebuilds: int) -> str:
    """What a runner actor's death is raised as (what was tried, what to do)."""
    head = f"env runner {index} (a Ray actor) died: {error}"
    if missing is not None:
        module = "a module" if missing == "?" else f"module {missing!r}"
        return (f"{head}; {module} is not importable in the Ray workers (rebuilding the runner would not "
                "help): install it where Ray runs, or ship it with ray.init(runtime_env={'py_modules': "
                "[...]} or {'working_dir': ...} or {'pip': [...]})")
    if restart:
        return (f"{head}; it was rebuilt {rebuilds} time(s) in this call and died every time "
                f"(at most {MAX_RESTARTS_PER_CALL}): the env or its runner fails each time")
    return (f"{head}; with .fault_tolerance(restart_failed_env_runners=True) it is rebuilt and its share "
            "sampled again")
