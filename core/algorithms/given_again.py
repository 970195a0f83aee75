"""Whether what a load is given again is what the checkpoint saved: the mapping function (a
running episode continues only under the saved one: :func:`same_episodes`), and a setting
(:func:`same_value`, plain data as a portable format gives it back)."""

from __future__ import annotations

from collections.abc import Mapping
from types import CodeType
from typing import TYPE_CHECKING, Any

from amber.state import Ref

if TYPE_CHECKING:
    import pluggy

__all__ = ["same_episodes", "same_function", "same_value"]


def same_value(a: Any, b: Any) -> bool:
    """Whether two settings are the same plain data (a tuple as the list a portable format gives back)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(same_value, a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    try:
        return a is b or bool(a == b)
    except Exception:  # noqa: BLE001 - an array of several values, or an odd object: not the same
        return False


def same_episodes(own: Mapping[str, Any], policy_ids: Any, fn: Any, pm: pluggy.PluginManager | None) -> bool:
    """Whether a load continues the saved running episodes: with all the saved policies (no
    ``policy_ids``) and the saved mapping. A mapping ``fn`` given is the saved one when it is
    that very function, the one registered under the saved name, one given for a placeholder (a
    function the checkpoint could not store), or one of the same code over the same values (a
    pickled copy)."""
    if policy_ids is not None:
        return False  # the episodes' agents may map to policies not loaded: they restart
    saved = own["config"].get("policy_mapping_fn")
    if fn is None or fn is saved:
        return True
    if isinstance(saved, Ref):
        if saved.is_placeholder:
            return True
        try:
            return saved.resolve(what="config.policy_mapping_fn", pm=pm) is fn
        except Exception:  # noqa: BLE001 - not registered here: not known to be the same
            return False
    return same_function(saved, fn)


def same_function(a: Any, b: Any, depth: int = 0) -> bool:
    """Whether two functions are one (a pickled copy of the other): the same code (line numbers
    aside), defaults, closure values and globals it names (functions among them compared so)."""
    if a is b:
        return True
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    if not isinstance(code_a, CodeType) or not isinstance(code_b, CodeType) or depth > 3:
        return False
    if not _same_code(code_a, code_b) or not same_value(a.__defaults__, b.__defaults__) \
            or not same_value(a.__kwdefaults__, b.__kwdefaults__):
        return False
    cells_a, cells_b = a.__closure__ or (), b.__closure__ or ()
    try:
        pairs = [(x.cell_contents, y.cell_contents) for x, y in zip(cells_a, cells_b, strict=True)]
    except ValueError:  # a cell not filled yet, or closures of other lengths
        return False
    missing = object()
    pairs += [(a.__globals__.get(n, missing), b.__globals__.get(n, missing)) for n in _names(code_a)]
    return all(x is y or (callable(x) and same_function(x, y, depth + 1))
               or (not callable(x) and same_value(x, y)) for x, y in pairs)


def _same_code(a: CodeType, b: CodeType) -> bool:
    """The same bytecode, names and constants (nested code compared so), wherever it was written."""
    keys = ("co_code", "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_argcount",
            "co_posonlyargcount", "co_kwonlyargcount", "co_flags")
    if any(getattr(a, k) != getattr(b, k) for k in keys) or len(a.co_consts) != len(b.co_consts):
        return False
    consts = zip(a.co_consts, b.co_consts, strict=True)
    return all(_same_code(x, y) if isinstance(x, CodeType) and isinstance(y, CodeType)
               else type(x) is type(y) and same_value(x, y) for x, y in consts)


def _names(code: CodeType) -> set[str]:
    """The global (and attribute) names a function's code, nested code included, refers to."""
    return set(code.co_names).union(*(_names(c) for c in code.co_consts if isinstance(c, CodeType)))
